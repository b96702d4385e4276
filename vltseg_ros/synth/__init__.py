"""Procedural street-scene benchmark: a small, offline GTA5 -> Cityscapes / ACDC analogue
(docs/design.md#synthetic-benchmark).

A scene is built from the seed alone (camera, road, buildings, poles, vegetation, people, vehicles) as planar 3-D
polygons in metres and rasterised with a z-buffer into a surface-id map. Labels, instances and boxes are read off
the surface table, so they are exact and identical in every style and condition. Appearance is a second pass over
that G-buffer:

- ``synthetic``: flat colour per surface (class colour jittered, kept off the Cityscapes palette), flat sky, no
  textures, shadows or noise (the GTA5-like source domain);
- ``realistic``: procedural textures in world coordinates, sun light with cast shadows, contact shadows under
  vehicles, gradient sky with clouds, stronger colour variation, auto exposure and sensor noise;
- conditions ``fog`` (depth-based exponential blend), ``night`` (street lamps, head/tail lights, lit windows,
  glow), ``rain`` (wet reflections, streaks, haze) and ``snow`` (snow cover, flakes) change appearance only.

Frames are written in the Cityscapes layout (``leftImg8bit`` / ``gtFine`` with labelIds, labelTrainIds and 16-bit
instanceIds) so the dataset code reads real and synthetic data alike.

Modules: ``raster`` (camera, clipping, z-buffer), ``materials`` (materials, textures), ``scene`` (labels, shapes,
the surface table), ``street`` (the layout) with one module per kind of object (``road``, ``buildings``,
``vegetation``, ``furniture``, ``vehicles``, ``people``), ``shading`` (styles) and ``weather`` (conditions),
``frame`` (one frame and the small-box convention), ``writer`` (the Cityscapes layout) and ``cli``
(``vltseg synth``).
"""
from .frame import MIN_BOX_SIDE, Frame, render_frame
from .shading import STYLES
from .weather import CONDITIONS
from .writer import write_benchmark, write_split

__all__ = ["CONDITIONS", "MIN_BOX_SIDE", "STYLES", "Frame", "render_frame", "write_benchmark", "write_split"]
