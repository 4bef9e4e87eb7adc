"""The NeXus/HDF5 side of the writer: a scan's entry in its own file (:mod:`.scan_file`),
the session's master file (:mod:`.master`), how channels are stored (:mod:`.datasets`),
HDF5's hot paths (:mod:`.hdf5`) and chunk compression on several cores
(:mod:`.chunk_compression`).

.. important::
   Nothing is imported here: each module's docstring says which thread its objects belong
   to.
"""
