"""Shared library of the workflow's steps: FITS I/O and provenance (``wfutils``), survey
geometry (``survey_plan``), the exposure table, source masks, level-matching, astrometry and
catalog helpers. Nothing here is a step; the runnable steps are the scripts beside this package."""
