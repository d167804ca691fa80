"""stenoxdp.indexer"""
