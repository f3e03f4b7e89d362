"""Post-training quantization as Relax passes: annotate -> calibrate -> realize.

Landed so far: the calibration algorithms (range estimation, quantization parameters) and the
calibration-data loader, written once and independent of any backend.
"""
