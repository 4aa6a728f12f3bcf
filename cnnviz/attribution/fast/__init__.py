"""The speed machinery under the method families: nothing here is a method, and nothing here imports one.

Each module makes some family's forwards or backwards cheaper without changing what they compute:

* :mod:`.tail` - the network after a layer as an fx graph, so the CAM family reruns only the tail;
* :mod:`.layer_forward` - a compiled forward that also hands out the default layer's output;
* :mod:`.folded` - a copy of the network with batch norms folded into their convolutions (gradients);
* :mod:`.fastconv` - prepacked frozen convolutions for the backward passes of the gradient family;
* :mod:`.incremental` - occlusion that recomputes only the windows a patch changes (after Krypton);
* :mod:`.windows` - where sliding windows start (occlusion and its incremental engine share it).

The method families (:mod:`cnnviz.attribution`) import from here; the import contract in
pyproject.toml keeps the other direction closed, so these modules stay reusable by any family.
"""
