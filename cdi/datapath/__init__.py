"""The shared data path: sources in, raw disk images (or extracted archives) out.

Entry point: ``cdi.datapath.processor.run(source, settings, reporter) -> WorkerResult``.
Building blocks: ``streams`` (metering, peeking, decompression), ``formats`` (magic bytes),
``sparse`` (targets and the zero-aware pump), ``archive`` (confined tar extraction),
``imagecheck`` (our own header checks: self-contained images only), ``qemu_img`` and
``nbdkit`` (tool wrappers, confined by ``sandbox``), ``filesource`` (a local file as a Source),
``progress`` (throttled progress file).
"""
