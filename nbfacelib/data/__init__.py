"""Data: synthetic faces, image folders, RecordIO, verification pair sets, manifests."""
