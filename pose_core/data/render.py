"""Headless OpenGL renderer (moderngl + EGL, Mesa llvmpipe on CPU) for pose-labelled images.

Geometry follows :mod:`pose_core.so3`: a pose rotation ``R`` ``(3, 3)`` maps object-frame points into
the camera optical frame, and the object origin sits on the optical axis at ``camera.distance``,
so ``x_camera = R @ x_object + (0, 0, distance)``. Images are ``(H, W, 3)`` ``uint8`` arrays whose
row 0 is the top of the image and whose pixel ``(row v, column u)`` is centred on the pinhole
projection ``(u, v, 1) ~ K @ x_camera`` (OpenCV pixel convention: pixel centres at integers).
The OpenGL y-up / -z-forward flip is hidden inside :meth:`Camera.gl_projection`.

A :class:`Renderer` owns one GL context and the meshes uploaded to it. The context is created
lazily, on the first render in each process, so a renderer can be built in the main process and
pickled into ``torch.utils.data.DataLoader`` workers. Mesa cannot make a context in a process
forked from one that already has one: if the main process renders too, give the DataLoader
``multiprocessing_context="spawn"`` (a forked worker raises ``RuntimeError`` saying so).
Rendering is deterministic: the same mesh, rotation, background and occluders give the same pixels.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Camera",
    "Light",
    "Lighting",
    "Mesh",
    "Occluder",
    "Renderer",
    "random_occluders",
]

_VERTEX_SHADER = """
#version 330
uniform mat3 rotation;
uniform vec3 translation;
uniform mat4 projection;
in vec3 in_pos;
in vec3 in_normal;
in vec3 in_color;
in vec3 in_uvw;
out vec3 v_pos;
out vec3 v_normal;
out vec3 v_color;
out vec3 v_uvw;
void main() {
    vec3 p = rotation * in_pos + translation;
    v_pos = p;
    v_normal = rotation * in_normal;
    v_color = in_color;
    v_uvw = in_uvw;
    gl_Position = projection * vec4(p, 1.0);
}
"""

_FRAGMENT_SHADER = """
#version 330
#define MAX_LIGHTS 4
uniform int n_lights;
uniform vec3 light_dirs[MAX_LIGHTS];
uniform vec3 light_colors[MAX_LIGHTS];
uniform float ambient;
uniform float specular;
uniform float shininess;
uniform vec3 tint;
uniform bool lit;
uniform sampler2D tex;
in vec3 v_pos;
in vec3 v_normal;
in vec3 v_color;
in vec3 v_uvw;
out vec4 f_color;
void main() {
    vec3 c = v_color;
    if (v_uvw.z > 0.5) {
        c *= texture(tex, v_uvw.xy).rgb;
    }
    if (!lit) {
        f_color = vec4(c, 1.0);
        return;
    }
    c *= tint;
    {
        // Face normal of the triangle, turned towards the camera (at the origin): two-sided lighting
        // for meshes with inconsistent winding, without flipping interpolated normals at silhouettes.
        vec3 face_n = normalize(cross(dFdx(v_pos), dFdy(v_pos)));
        if (dot(face_n, v_pos) > 0.0) face_n = -face_n;
        vec3 n = normalize(v_normal);
        if (dot(n, face_n) < 0.0) n = -n;
        vec3 shade = vec3(ambient);
        vec3 highlight = vec3(0.0);
        vec3 to_eye = normalize(-v_pos);
        for (int i = 0; i < n_lights; ++i) {
            shade += light_colors[i] * max(dot(n, light_dirs[i]), 0.0);
            if (specular > 0.0) {
                vec3 h = normalize(light_dirs[i] + to_eye);
                highlight += specular * light_colors[i] * pow(max(dot(n, h), 0.0), shininess);
            }
        }
        c = c * shade + highlight;
    }
    f_color = vec4(c, 1.0);
}
"""

_FLOATS_PER_VERTEX = 12  # position 3, normal 3, colour 3, (u, v, textured) 3
_MAX_OCCLUDERS = 16
_MAX_LIGHTS = 4
# Processes (by pid) that created a GL context in this address space. After fork() a child
# inherits Mesa's state (locks held by llvmpipe threads that do not exist in the child): making
# a context there hangs, so we refuse with an explanation instead.
_GL_PIDS: set[int] = set()


@dataclass(frozen=True)
class Camera:
    """Pinhole camera looking at an object placed at ``(0, 0, distance)`` in the optical frame.

    ``focal`` is in pixels (``fx = fy``); ``None`` gives ``1.75 * min(width, height)``, which frames an
    object of bounding radius 1 at the default ``distance`` 4 with about 10 % margin. The principal
    point is the image centre ``((width - 1) / 2, (height - 1) / 2)``.
    """

    width: int = 224
    height: int = 224
    focal: float | None = None
    distance: float = 4.0
    near: float = 0.5
    far: float = 20.0

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if self.focal is None:
            object.__setattr__(self, "focal", 1.75 * min(self.width, self.height))
        if not 0 < self.near < self.distance < self.far:
            raise ValueError(f"need 0 < near < distance < far, got {self.near}, {self.distance}, {self.far}")

    @property
    def K(self) -> np.ndarray:
        """Intrinsic matrix ``(3, 3)`` float64 (OpenCV convention, pixel centres at integers)."""
        f = float(self.focal)  # type: ignore[arg-type]
        return np.array(
            [[f, 0.0, (self.width - 1) / 2], [0.0, f, (self.height - 1) / 2], [0.0, 0.0, 1.0]]
        )

    @property
    def translation(self) -> np.ndarray:
        """Object origin in the camera frame, ``(3,)`` float64: ``(0, 0, distance)``."""
        return np.array([0.0, 0.0, self.distance])

    def scaled(self, factor: int) -> Camera:
        """The same view at ``factor`` times the resolution (for supersampling)."""
        return Camera(self.width * factor, self.height * factor, float(self.focal) * factor,  # type: ignore[arg-type]
                      self.distance, self.near, self.far)

    def gl_projection(self) -> np.ndarray:
        """``(4, 4)`` float64 matrix from optical-frame points to OpenGL clip coordinates.

        NDC ``x = 2 (u + 0.5) / W - 1`` and ``y = 2 (v + 0.5) / H - 1`` with ``(u, v)`` the OpenCV pixel
        coordinates: GL's bottom framebuffer row is image row 0, so the bottom-first read-back is
        already in top-first image order (no flip), and depth increases along +z.
        """
        return _gl_projection(self.K, self.width, self.height, self.near, self.far)

    def project(self, points_camera: np.ndarray) -> np.ndarray:
        """Pixel coordinates ``(..., 2)`` (u = column, v = row) of optical-frame points ``(..., 3)``."""
        p = np.asarray(points_camera, dtype=np.float64)
        if p.shape[-1:] != (3,):
            raise ValueError(f"points_camera must have shape (..., 3), got {p.shape}")
        uvw = p @ self.K.T
        return uvw[..., :2] / uvw[..., 2:]


def _gl_projection(K: np.ndarray, W: int, H: int, n: float, f: float) -> np.ndarray:
    """:meth:`Camera.gl_projection` for intrinsics ``K`` ``(3, 3)`` and a ``W`` x ``H`` image."""
    return np.array(
            [
                [2 * K[0, 0] / W, 0.0, 2 * (K[0, 2] + 0.5) / W - 1, 0.0],
                [0.0, 2 * K[1, 1] / H, 2 * (K[1, 2] + 0.5) / H - 1, 0.0],
                [0.0, 0.0, (f + n) / (f - n), -2 * f * n / (f - n)],
                [0.0, 0.0, 1.0, 0.0],
        ]
    )


@dataclass(eq=False)
class Mesh:
    """Triangle soup in the object frame, ready for upload.

    ``positions``, ``normals`` and ``colors`` (linear RGB in [0, 1]) are ``(3T, 3)`` float32, three
    rows per triangle. ``uvs`` ``(3T, 2)`` float32 (OBJ convention: v = 0 is the bottom row of the
    texture image) and ``texture`` ``(H, W, 3)`` uint8 (row 0 = top) are optional; ``textured``
    ``(3T,)`` bool says which vertices sample the texture (their colour is multiplied by it).
    Compared by identity (a renderer caches uploads per mesh object).
    """

    positions: np.ndarray
    normals: np.ndarray
    colors: np.ndarray
    uvs: np.ndarray | None = None
    texture: np.ndarray | None = None
    textured: np.ndarray | None = None
    name: str = "mesh"

    def __post_init__(self) -> None:
        self.positions = np.ascontiguousarray(self.positions, dtype=np.float32)
        n = self.positions.shape[0]
        if self.positions.ndim != 2 or self.positions.shape[1] != 3 or n % 3 != 0 or n == 0:
            raise ValueError(f"positions must have shape (3T, 3) with T >= 1, got {self.positions.shape}")
        self.normals = np.ascontiguousarray(self.normals, dtype=np.float32)
        colors = np.asarray(self.colors, dtype=np.float32)
        if colors.shape == (3,):
            colors = np.broadcast_to(colors, (n, 3))
        self.colors = np.ascontiguousarray(colors)
        for name in ("normals", "colors"):
            if getattr(self, name).shape != (n, 3):
                raise ValueError(f"{name} must have shape ({n}, 3), got {getattr(self, name).shape}")
        if (self.uvs is None) != (self.texture is None):
            raise ValueError("uvs and texture must be given together")
        if self.uvs is not None and self.texture is not None:
            self.uvs = np.ascontiguousarray(self.uvs, dtype=np.float32)
            if self.uvs.shape != (n, 2):
                raise ValueError(f"uvs must have shape ({n}, 2), got {self.uvs.shape}")
            self.texture = np.ascontiguousarray(self.texture, dtype=np.uint8)
            if self.texture.ndim != 3 or self.texture.shape[2] != 3:
                raise ValueError(f"texture must have shape (H, W, 3), got {self.texture.shape}")
            textured = np.ones(n, bool) if self.textured is None else np.asarray(self.textured, bool)
            if textured.shape != (n,):
                raise ValueError(f"textured must have shape ({n},), got {textured.shape}")
            self.textured = textured

    @property
    def num_triangles(self) -> int:
        return self.positions.shape[0] // 3

    @classmethod
    def from_indexed(
        cls,
        vertices: np.ndarray,
        faces: np.ndarray,
        colors: np.ndarray | Sequence[float] = (0.8, 0.8, 0.8),
        smooth: bool = False,
        name: str = "mesh",
        per_face: bool = False,
    ) -> Mesh:
        """Mesh from vertices ``(V, 3)`` and triangles ``(T, 3)`` (int, counter-clockwise seen from
        outside). ``colors`` is one RGB ``(3,)``, or per vertex ``(V, 3)``, or per face ``(T, 3)`` when
        ``per_face``; normals are per face (``smooth=False``) or area-weighted per vertex."""
        v = np.asarray(vertices, dtype=np.float64)
        f = np.asarray(faces, dtype=np.int64)
        if v.ndim != 2 or v.shape[1] != 3:
            raise ValueError(f"vertices must have shape (V, 3), got {v.shape}")
        if f.ndim != 2 or f.shape[1] != 3:
            raise ValueError(f"faces must have shape (T, 3), got {f.shape}")
        tri = v[f]  # (T, 3, 3)
        fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # (T, 3), |fn| = 2 * area
        if smooth:
            vn = np.zeros_like(v)
            for k in range(3):
                np.add.at(vn, f[:, k], fn)
            normals = vn[f].reshape(-1, 3)
        else:
            normals = np.repeat(fn, 3, axis=0)
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        c = np.asarray(colors, dtype=np.float64)
        if c.shape == (3,):
            cols = np.broadcast_to(c, (f.size, 3))
        elif per_face and c.shape == (len(f), 3):
            cols = np.repeat(c, 3, axis=0)
        elif not per_face and c.shape == (len(v), 3):
            cols = c[f].reshape(-1, 3)
        else:
            want = f"({len(f)}, 3)" if per_face else f"({len(v)}, 3)"
            raise ValueError(f"colors must have shape (3,) or {want}, got {c.shape}")
        return cls(tri.reshape(-1, 3), normals, cols, name=name)


@dataclass(frozen=True)
class Light:
    """A directional light: ``direction`` ``(3,)`` towards the light in the camera optical frame
    (normalised on use; the camera looks along +z, so a light behind the camera has z < 0) and
    ``color`` RGB, the diffuse gain per channel (``(0.65,) * 3`` is the default light)."""

    direction: tuple[float, float, float] = (-0.4, -0.6, -1.0)
    color: tuple[float, float, float] = (0.65, 0.65, 0.65)


@dataclass(frozen=True)
class Lighting:
    """Lights of one render: surface colour ``c`` (times the mesh ``tint``) is shaded as
    ``c * (ambient + sum_i color_i max(0, n . l_i)) + specular * sum_i color_i max(0, n . h_i)^shininess``
    (Blinn-Phong highlights, white; ``h_i`` the half vector to the eye). At most 4 lights."""

    lights: tuple[Light, ...] = (Light(),)
    ambient: float = 0.35
    specular: float = 0.0
    shininess: float = 32.0

    def __post_init__(self) -> None:
        if not 0 <= len(self.lights) <= _MAX_LIGHTS:
            raise ValueError(f"at most {_MAX_LIGHTS} lights, got {len(self.lights)}")
        for light in self.lights:
            if not np.linalg.norm(light.direction) > 0:
                raise ValueError(f"light direction must be non-zero, got {light.direction}")


@dataclass(frozen=True)
class Occluder:
    """A flat, unlit, coloured rectangle in the camera optical frame, parallel to the image plane.

    ``center`` ``(3,)`` in the optical frame (z = depth), ``half_size`` ``(2,)`` along its own axes,
    ``angle`` its in-plane rotation (radians), ``color`` RGB in [0, 1].
    """

    center: tuple[float, float, float]
    half_size: tuple[float, float]
    angle: float = 0.0
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def corners(self) -> np.ndarray:
        """The 4 corners ``(4, 3)`` float64 in the optical frame."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        hx, hy = self.half_size
        local = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
        rot = local @ np.array([[c, s], [-s, c]])
        return np.column_stack((rot[:, 0] + self.center[0], rot[:, 1] + self.center[1], np.full(4, self.center[2])))


def random_occluders(
    rng: np.random.Generator,
    camera: Camera,
    max_count: int = 3,
    object_radius: float = 1.0,
    max_fraction: float = 0.35,
) -> list[Occluder]:
    """Between 0 and ``max_count`` random occluders in front of an object of ``object_radius``.

    Each lies between the camera and the object's bounding sphere, overlaps the object's image
    and has sides up to ``max_fraction`` of the object's projected diameter. Deterministic in ``rng``.
    """
    if max_count < 0 or max_count > _MAX_OCCLUDERS:
        raise ValueError(f"max_count must be in [0, {_MAX_OCCLUDERS}], got {max_count}")
    out = []
    front = camera.distance - object_radius
    for _ in range(int(rng.integers(0, max_count + 1))):
        z = float(rng.uniform(max(camera.near * 1.5, 0.5 * front), 0.95 * front))
        scale = object_radius * z / camera.distance  # object radius as seen at depth z
        x, y = rng.uniform(-0.8, 0.8, size=2) * scale
        half = rng.uniform(0.1, max_fraction, size=2) * scale
        out.append(
            Occluder(
                center=(float(x), float(y), z),
                half_size=(float(half[0]), float(half[1])),
                angle=float(rng.uniform(0, math.pi)),
                color=tuple(float(c) for c in rng.uniform(0.0, 1.0, size=3)),  # type: ignore[arg-type]
            )
        )
    return out


def _translation(cam: Camera, distance: float | None, translation: Any) -> tuple[float, float, float]:
    """The object origin ``(x, y, z)`` of a render: ``translation``, else ``(0, 0, distance)`` (default the
    camera's); ValueError for both, a non-finite one, or a depth outside ``(near, far)``."""
    if translation is not None and distance is not None:
        raise ValueError("give distance or translation, not both")
    if translation is None:
        t = np.array([0.0, 0.0, cam.distance if distance is None else float(distance)])
        what = "distance"
    else:
        t = np.asarray(translation, dtype=np.float64)
        what = "translation z"
        if t.shape != (3,) or not np.isfinite(t).all():
            raise ValueError(f"translation must be 3 finite numbers, got {translation!r}")
    if not cam.near < t[2] < cam.far:
        raise ValueError(f"{what} must lie between the camera's near {cam.near} and far {cam.far}, got {t[2]}")
    return float(t[0]), float(t[1]), float(t[2])


def _as_rotation_array(rotation: Any) -> np.ndarray:
    """``(3, 3)`` float64 numpy array of a numpy or torch rotation."""
    R = np.asarray(rotation.detach().cpu().numpy() if hasattr(rotation, "detach") else rotation, np.float64)
    if R.shape != (3, 3):
        raise ValueError(f"rotation must have shape (3, 3), got {R.shape}")
    return R


@dataclass
class _Uploaded:
    mesh_ref: Any  # weakref.ref to the Mesh
    vbo: Any
    vao: Any
    texture: Any | None


@dataclass
class Renderer:
    """Renders :class:`Mesh` objects at pose rotations into RGB images (see the module docstring).

    ``samples``: MSAA samples (0, 2 or 4; llvmpipe offers up to 4). ``supersample``: render at this
    integer factor and box-filter down (combines with MSAA). ``light_dir``: unit vector towards the
    light, fixed in the camera frame (default from the upper left, behind the camera).
    ``ambient + diffuse * max(0, n . light_dir)`` scales the surface colour: the default
    :attr:`lighting`; a render may pass its own :class:`Lighting`, intrinsics, distance and tint.
    """

    camera: Camera = field(default_factory=Camera)
    samples: int = 4
    supersample: int = 1
    light_dir: tuple[float, float, float] = (-0.4, -0.6, -1.0)
    ambient: float = 0.35
    diffuse: float = 0.65
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.samples not in (0, 1, 2, 4):
            raise ValueError(f"samples must be 0, 1, 2 or 4, got {self.samples}")
        if self.supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {self.supersample}")
        self._reset()

    @property
    def lighting(self) -> Lighting:
        """The default :class:`Lighting` of this renderer (from ``light_dir``, ``ambient``, ``diffuse``)."""
        return Lighting((Light(tuple(self.light_dir), (self.diffuse,) * 3),), ambient=self.ambient)  # type: ignore[arg-type]

    def _reset(self) -> None:
        self._pid: int | None = None
        self._ctx: Any = None
        self._uploads: dict[int, _Uploaded] = {}

    # Pickling (DataLoader workers): ship the settings only; each process makes its own context.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def _ensure_context(self) -> None:
        if self._ctx is not None and self._pid == os.getpid():
            return
        import moderngl  # imported here so that importing this module never needs a GL stack

        if _GL_PIDS - {os.getpid()}:
            raise RuntimeError(
                "this process was forked from one that had already created an OpenGL context, which Mesa "
                "cannot use after fork(); render only in the worker processes, or start them with "
                "multiprocessing_context='spawn' (or 'forkserver') in the DataLoader"
            )
        # A context inherited through fork() is unusable; drop it without touching GL.
        self._reset()
        _GL_PIDS.add(os.getpid())
        ctx = moderngl.create_standalone_context(backend="egl")
        cam = self.camera.scaled(self.supersample)
        W, H = cam.width, cam.height
        samples = self.samples if self.samples > 1 else 0
        self._fbo = ctx.framebuffer(
            color_attachments=[ctx.renderbuffer((W, H), components=4, samples=samples)],
            depth_attachment=ctx.depth_renderbuffer((W, H), samples=samples),
        )
        self._resolve = (
            ctx.framebuffer(color_attachments=[ctx.renderbuffer((W, H), components=4)]) if samples else self._fbo
        )
        prog = ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
        prog["tex"].value = 0
        self._prog = prog
        self._occ_vbo = ctx.buffer(reserve=_MAX_OCCLUDERS * 6 * _FLOATS_PER_VERTEX * 4)
        self._occ_vao = ctx.vertex_array(
            prog, [(self._occ_vbo, "3f 3f 3f 3f", "in_pos", "in_normal", "in_color", "in_uvw")]
        )
        self._ctx = ctx
        self._pid = os.getpid()

    def _upload(self, mesh: Mesh) -> _Uploaded:
        entry = self._uploads.get(id(mesh))
        if entry is not None and entry.mesh_ref() is mesh:
            return entry
        if entry is not None:  # a dead mesh whose id was reused
            entry.vao.release()
            entry.vbo.release()
            if entry.texture is not None:
                entry.texture.release()
        n = mesh.positions.shape[0]
        uvw = np.zeros((n, 3), np.float32)
        texture = None
        if mesh.texture is not None and mesh.uvs is not None and mesh.textured is not None:
            uvw[:, :2] = mesh.uvs
            uvw[:, 2] = mesh.textured
            img = np.ascontiguousarray(mesh.texture[::-1])  # GL row 0 = v 0 = bottom of the image
            texture = self._ctx.texture((img.shape[1], img.shape[0]), 3, img.tobytes(), alignment=1)
            texture.build_mipmaps()
            texture.repeat_x = texture.repeat_y = True
        data = np.concatenate((mesh.positions, mesh.normals, mesh.colors, uvw), axis=1).astype(np.float32)
        vbo = self._ctx.buffer(data.tobytes())
        vao = self._ctx.vertex_array(self._prog, [(vbo, "3f 3f 3f 3f", "in_pos", "in_normal", "in_color", "in_uvw")])
        entry = _Uploaded(weakref.ref(mesh), vbo, vao, texture)
        self._uploads[id(mesh)] = entry
        return entry

    def render(
        self,
        mesh: Mesh,
        rotation: Any,
        *,
        background: Sequence[float] | np.ndarray | None = None,
        occluders: Sequence[Occluder] = (),
        lighting: Lighting | None = None,
        intrinsics: np.ndarray | None = None,
        distance: float | None = None,
        tint: Sequence[float] = (1.0, 1.0, 1.0),
        translation: Sequence[float] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Image ``(H, W, 3)`` uint8 of ``mesh`` at pose ``rotation`` ``(3, 3)`` (numpy or torch).

        ``background``: RGB ``(3,)`` in [0, 1] (default ``self.background``) or an image
        ``(H, W, 3)`` uint8 of the output size, composited behind the anti-aliased object.
        ``lighting``: default :attr:`lighting`. ``intrinsics``: ``K`` ``(3, 3)`` of this render
        (default ``camera.K``; a shifted principal point or another focal length is what a
        detector's off-centre or mis-sized crop looks like). ``distance``: of the object origin on
        the optical axis (default ``camera.distance``). ``tint``: RGB gain of the mesh's colours.
        ``translation``: ``(3,)`` the object origin anywhere in the optical frame instead of on the axis at
        ``distance`` (its depth between the camera's ``near`` and ``far``; not with ``distance``).
        """
        R = _as_rotation_array(rotation)
        if len(occluders) > _MAX_OCCLUDERS:
            raise ValueError(f"at most {_MAX_OCCLUDERS} occluders, got {len(occluders)}")
        bg = self.background if background is None else background
        bg_arr = np.asarray(bg)
        bg_image = bg_arr.ndim == 3
        cam = self.camera
        if bg_image and bg_arr.shape != (cam.height, cam.width, 3):
            raise ValueError(f"background image must have shape ({cam.height}, {cam.width}, 3), got {bg_arr.shape}")
        if not bg_image and bg_arr.shape != (3,):
            raise ValueError(f"background colour must have shape (3,), got {bg_arr.shape}")

        self._ensure_context()
        with self._ctx:  # make this renderer's context current: another Renderer may have switched it
            rgba = self._draw(mesh, R, (0.0, 0.0, 0.0, 0.0) if bg_image else (*map(float, bg_arr), 1.0),
                              occluders, lighting, intrinsics, _translation(self.camera, distance, translation), tint)
        if self.supersample == 1 and not bg_image:
            return rgba[:, :, :3].copy()
        img = self._downsample(rgba)
        if bg_image:  # premultiplied colour (cleared to 0) over the background
            alpha = img[:, :, 3:4] / 255.0
            img = img[:, :, :3] + (1.0 - alpha) * bg_arr.astype(np.float32)
        return np.clip(np.rint(img[:, :, :3]), 0, 255).astype(np.uint8)

    def render_layer(
        self,
        mesh: Mesh,
        rotation: Any,
        *,
        lighting: Lighting | None = None,
        intrinsics: np.ndarray | None = None,
        distance: float | None = None,
        tint: Sequence[float] = (1.0, 1.0, 1.0),
        translation: Sequence[float] | np.ndarray | None = None,
    ) -> np.ndarray:
        """``mesh`` alone as a layer ``(H, W, 4)`` float32 in [0, 1], colour premultiplied by alpha
        (the anti-aliased coverage): ``rgb + (1 - alpha) * under`` composites it over an image.
        Arguments as :meth:`render`."""
        R = _as_rotation_array(rotation)
        self._ensure_context()
        with self._ctx:
            rgba = self._draw(mesh, R, (0.0, 0.0, 0.0, 0.0), (), lighting, intrinsics,
                              _translation(self.camera, distance, translation), tint)
        return self._downsample(rgba) / np.float32(255.0)

    def _downsample(self, rgba: np.ndarray) -> np.ndarray:
        """``(H s, W s, 4)`` uint8 read-back → ``(H, W, 4)`` float32 box-filtered (``s = supersample``)."""
        img = rgba.astype(np.float32)
        s = self.supersample
        if s > 1:
            img = img.reshape(self.camera.height, s, self.camera.width, s, 4).mean(axis=(1, 3))
        return img

    def _set_view(self, lighting: Lighting | None, intrinsics: np.ndarray | None, tint: Sequence[float]) -> None:
        """Upload the projection, lights and tint of one render."""
        cam, prog, s = self.camera, self._prog, self.supersample
        K = cam.K if intrinsics is None else np.asarray(intrinsics, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"intrinsics must have shape (3, 3), got {K.shape}")
        Ks = K.copy()
        Ks[:2, :2] *= s
        Ks[:2, 2] = (K[:2, 2] + 0.5) * s - 0.5  # the same pixel centres at s times the resolution
        proj = _gl_projection(Ks, cam.width * s, cam.height * s, cam.near, cam.far)
        prog["projection"].write(proj.astype("f4").tobytes(order="F"))
        light = self.lighting if lighting is None else lighting
        dirs = np.zeros((_MAX_LIGHTS, 3), np.float32)
        cols = np.zeros((_MAX_LIGHTS, 3), np.float32)
        for i, li in enumerate(light.lights):
            d = np.asarray(li.direction, dtype=np.float64)
            dirs[i] = d / np.linalg.norm(d)
            cols[i] = li.color
        prog["n_lights"].value = len(light.lights)
        prog["light_dirs"].write(dirs.tobytes())
        prog["light_colors"].write(cols.tobytes())
        prog["ambient"].value = float(light.ambient)
        prog["specular"].value = float(light.specular)
        prog["shininess"].value = float(light.shininess)
        prog["tint"].value = tuple(float(x) for x in tint)

    def _draw(self, mesh: Mesh, R: np.ndarray, clear: tuple[float, float, float, float],
              occluders: Sequence[Occluder], lighting: Lighting | None, intrinsics: np.ndarray | None,
              translation: tuple[float, float, float], tint: Sequence[float]) -> np.ndarray:
        """The GL part of :meth:`render`, with this renderer's context current: the framebuffer
        ``(H s, W s, 4)`` uint8, cleared to ``clear``."""
        cam = self.camera
        ctx, prog = self._ctx, self._prog
        up = self._upload(mesh)
        self._set_view(lighting, intrinsics, tint)
        self._fbo.use()
        ctx.enable(ctx.DEPTH_TEST)
        self._fbo.clear(*clear, depth=1.0)

        prog["rotation"].write(R.astype("f4").tobytes(order="F"))
        prog["translation"].value = translation
        prog["lit"].value = True
        if up.texture is not None:
            up.texture.use(0)
        up.vao.render()

        if occluders:
            quads = []
            for occ in occluders:
                c = occ.corners()[[0, 1, 2, 0, 2, 3]]  # two triangles
                rows = np.zeros((6, _FLOATS_PER_VERTEX), np.float32)
                rows[:, 0:3] = c
                rows[:, 5] = -1.0  # normal towards the camera (unused: unlit)
                rows[:, 6:9] = occ.color
                quads.append(rows)
            data = np.concatenate(quads).astype(np.float32)
            self._occ_vbo.write(data.tobytes())
            prog["rotation"].write(np.eye(3, dtype="f4").tobytes())
            prog["translation"].value = (0.0, 0.0, 0.0)
            prog["lit"].value = False
            self._occ_vao.render(vertices=6 * len(occluders))

        if self._resolve is not self._fbo:
            ctx.copy_framebuffer(self._resolve, self._fbo)
        s = self.supersample
        raw = self._resolve.read(components=4, alignment=1)
        return np.frombuffer(raw, dtype=np.uint8).reshape(cam.height * s, cam.width * s, 4)

    def close(self) -> None:
        """Release the GL context of this process (a later render creates a new one)."""
        if self._ctx is not None and self._pid == os.getpid():
            self._ctx.release()
        self._reset()
