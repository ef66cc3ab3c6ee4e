"""nbfacelib.report"""
