"""Cohort queries at a node: criteria over clinical and imaging data, counted per patient,
with small-count suppression and a defence against differencing (issue 6; in progress)."""
