"""Running a bundle on product images: decoding and preprocessing (`imaging`) and the batched tagging engine
(`engine`) that turns images into attribute values with confidences and boxes.

Must not: train, write to a database or read configuration; the daemon wires it.
"""
