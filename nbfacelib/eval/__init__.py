"""nbfacelib.eval"""
