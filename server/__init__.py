"""stenoxdp.server"""
