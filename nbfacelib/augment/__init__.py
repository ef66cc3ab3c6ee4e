"""nbfacelib.augment"""
