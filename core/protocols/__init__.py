"""The serving ecosystem's protocols, without HTTP types: KServe V1 bodies and Open Inference Protocol tensors.

Routes (``service/routes/kserve_v1.py``, ``service/routes/oip_v2.py``) read a body into these
shapes, run the same predict and explain pipeline as the native routes, and write the answer back
in the protocol's own shape; limits, prices and errors are the native ones.
"""
