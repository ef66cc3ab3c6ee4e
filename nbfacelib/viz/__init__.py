"""nbfacelib.viz"""
