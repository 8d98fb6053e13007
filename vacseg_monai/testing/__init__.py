"""Support for the tests and the benchmarks, not used by the node itself.

- :mod:`vacseg_monai.testing.peers`: DICOM peers as processes (DCMTK ``storescp`` / ``storescu`` /
  ``echoscu``, pynetdicom's ``storescp``, the node run by ``scripts/serve_scp.py``), free ports and
  bounded waits;
- :mod:`vacseg_monai.testing.processors`: :class:`~vacseg_monai.testing.processors.StandInProcessor`,
  a worker processor that reads the series and returns one small image, for the node's tests and the
  receive and memory benchmarks (``--processor vacseg_monai.testing.processors:StandInProcessor``);
- :mod:`vacseg_monai.testing.orthanc`: Debian's Orthanc as a PACS peer on loopback, with a
  temporary configuration, and a small client of its REST API.
"""
