"""stenoxdp.proto"""
