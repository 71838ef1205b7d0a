"""Data: the synthetic catalog generator and readers for FashionIQ, Shoes and Fashion200k."""
