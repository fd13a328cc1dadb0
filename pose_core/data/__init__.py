"""Data for pose-distribution models: a headless renderer, SYMSOL shapes, SYMSOL-like datasets,
loaders for the public ModelNet10-SO(3) and PASCAL3D+ layouts,
ModelNet40 meshes, and procedural shape classes.

Conventions (pose rotations, frames) are those of :mod:`pose_core.so3`.
"""

from pose_core.data.modelnet import MODELNET10_CATEGORIES, ModelNet10SO3
from pose_core.data.pascal3d import PASCAL3D_CATEGORIES, Pascal3D, Pascal3DReal, Pascal3DSynth
from pose_core.data.render import Camera, Mesh, Occluder, Renderer, random_occluders
from pose_core.data.shapes import (
    SHAPE_NAMES,
    SYMSOL_I,
    SYMSOL_II,
    MarkedShape,
    Shape,
    get_shape,
    load_obj,
    load_urdf,
    make_shape,
    mesh_shape,
    symmetry_group_of_points,
)
from pose_core.data.symsol import (
    SymsolFileError,
    SymsolLikeDataset,
    SymsolSplit,
    collate_symsol,
    item_rotation,
    write_split,
)

__all__ = [
    "Camera",
    "Mesh",
    "Occluder",
    "Renderer",
    "random_occluders",
    "SHAPE_NAMES",
    "SYMSOL_I",
    "SYMSOL_II",
    "Shape",
    "MarkedShape",
    "get_shape",
    "make_shape",
    "mesh_shape",
    "load_obj",
    "load_urdf",
    "symmetry_group_of_points",
    "SymsolFileError",
    "SymsolLikeDataset",
    "SymsolSplit",
    "collate_symsol",
    "item_rotation",
    "write_split",
    "MODELNET10_CATEGORIES",
    "ModelNet10SO3",
    "PASCAL3D_CATEGORIES",
    "Pascal3D",
    "Pascal3DReal",
    "Pascal3DSynth",
]

from pose_core.data.bop import BopCamera, BopDataset, BopInstance, ObjectInfo, load_bop_model, read_models_info  # noqa: E402

__all__ += ["BopCamera", "BopDataset", "BopInstance", "ObjectInfo", "load_bop_model", "read_models_info"]

from pose_core.data.occluded_pascal3d import (  # noqa: E402
    OCCLUDED_PASCAL3D_DIR,
    OCCLUDED_PASCAL3D_LEVELS,
    OccludedPascal3D,
    read_occlusion_annotation,
)
from pose_core.data.occlusion import OCCLUDER_KINDS, OCCLUSION_LEVELS, OccludedRenders, occlusion_level  # noqa: E402

__all__ += ["OCCLUDED_PASCAL3D_DIR", "OCCLUDED_PASCAL3D_LEVELS", "OccludedPascal3D", "read_occlusion_annotation",
            "OCCLUDER_KINDS", "OCCLUSION_LEVELS", "OccludedRenders", "occlusion_level"]

from pose_core.data.modelnet40 import MODELNET40_CLASSES, ModelNet40, read_off  # noqa: E402
from pose_core.data.procedural import (  # noqa: E402
    PROCEDURAL_CLASSES,
    ProceduralShape,
    make_procedural_shape,
    procedural_split,
    render_mesh,
)

__all__ += ["MODELNET40_CLASSES", "ModelNet40", "read_off",
            "PROCEDURAL_CLASSES", "ProceduralShape", "make_procedural_shape", "procedural_split", "render_mesh"]
