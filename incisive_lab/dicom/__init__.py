"""DICOM helpers and the synthetic data generator (:mod:`incisive_lab.dicom.synth`)."""

__all__: list[str] = []
