"""stl10sim: image similarity search over STL-10 with MobileNetV2 features, MinHash and an LSH forest."""

__version__ = "0.1.0"
