"""nbfacelib.topology"""
