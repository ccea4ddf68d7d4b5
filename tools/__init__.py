"""Measurement tools: the yardstick U-Net, the speed report and the quality-per-step comparison."""
