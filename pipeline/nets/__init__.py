"""The architectures, as MONAI keeps ``monai/networks/nets/``; :mod:`pipeline.networks` is their
registry (build them by name with :func:`pipeline.networks.build_network`).

UNeXt (:mod:`~pipeline.nets.unext`), U-Net (:mod:`~pipeline.nets.unet`), ResU-Net
(:mod:`~pipeline.nets.resunet`),
U-Net++ (:mod:`~pipeline.nets.unetplusplus`), DeepLabV3+ (:mod:`~pipeline.nets.deeplab`), Segmenter
(:mod:`~pipeline.nets.segmenter`), FCN (:mod:`~pipeline.nets.fcn`), HRNetV2 (:mod:`~pipeline.nets.hrnet`) and
:class:`~pipeline.nets.ensemble.ModelEnsemble`.
"""
