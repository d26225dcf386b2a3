"""Data for the data layers: sources, Caffe's formats, transforms, prefetching, tools.

- :mod:`.prefetch`: :class:`~.prefetch.Prefetcher`, the background thread that keeps
  ``data_param.prefetch`` batches ready (pinned memory and a copy stream on GPUs).
- :mod:`.sources`: batch sources (LMDB records, image lists, HDF5 files, arrays).
- :mod:`.lmdb_io`: Caffe ``Datum`` records in LMDBs (read and write).
- :mod:`.images`: image files and JPEG/PNG bytes as uint8 C x H x W BGR arrays (Pillow).
- :mod:`.transform`: ``transform_param`` (crop, mirror, mean, scale).
- :mod:`.tools`: ``convert_imageset``, ``compute_image_mean``, ``convert_mnist``.
- :mod:`.digits`: 5,000 real MNIST digits shipped with dlsoft, with a fixed split;
  a Data layer reads them with ``source: "builtin:digits/train"`` (or ``/test``, ``/all``).
"""
