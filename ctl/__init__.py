"""stenoxdp: full-packet capture on XDP/AF_XDP."""
__version__ = "0.1.0"
