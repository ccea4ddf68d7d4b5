"""Faults during training, bench and inference: interruptions, bad checkpoints, non-finite steps, full
disks, out of memory and bad input at the scripts' level.

Tests named ``test_fault_NN_*`` cover row NN of ../shared/FAULTS.md (rows 1-20, 24-26 and the data
side of 21-22 are in ``test_data.py``; metric values of 27-28 in ``test_metrics.py``; tiling in
``test_tiling.py``). Everything runs on CPU with an 8-channel model on 32-48 px images.
"""
