"""nbfacelib.losses"""
