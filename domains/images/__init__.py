"""Images domain: Fashion-MNIST IDX loading (``data``), an ADM-style UNet (``backbone``) and an in-project
evaluation classifier with the FD-classifier metric (``metrics``).

Submodules are imported on use (``from sciddpm.domains.images.data import load_fashion_mnist``).
"""
