"""nbfacelib.models"""
