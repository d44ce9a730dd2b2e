"""Data governance at a node: sharing terms, access requests and grants, consent withdrawal (issue 6)."""
