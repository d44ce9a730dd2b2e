"""Federated training on Flower: node-approved tasks, consented cohorts, differential privacy.

A researcher submits a task (code approved by each node's steward, by hash) with a cohort;
the SuperLink runs the ServerApp (FedAvg or FedProx, federated evaluation, checkpoints,
per-round metrics); each node's SuperNode runs the ClientApp on its own consenting patients,
within the grants the user holds for the purpose. Only model updates travel. See docs/fl.md.
"""
