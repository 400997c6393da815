"""pifarm: a storage-first NVMe-oF and model-cache appliance for Raspberry Pi inference farms."""

__version__ = "0.1.0"
