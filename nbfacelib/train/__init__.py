"""nbfacelib.train"""
