"""stenoxdp.bpf"""
