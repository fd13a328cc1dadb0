"""The per-frame estimator: an RGB image (+ intrinsics, aligned depth, detection boxes) → one pose
estimate per object. The ROS node, the demos and the benchmark all call :meth:`PoseEstimator.estimate`.

What one call does, in order (each step one module, conventions stated there):

1. **Objects**: without boxes the image's largest centred square is one object; with boxes
   (:class:`Box`, highest score first, at most ``max_detections``) each becomes a square crop
   ``detection_crop_scale`` times its longer side around its centre (:mod:`pose_core.pinhole`).
   A box that is not finite, has no area, lies outside the image or asks for a crop more than
   ``max_crop_factor`` times the image's longer side is rejected with its reason; the others are
   served.
2. **Crops** → model inputs ``(n, 3, S, S)`` (:mod:`pose_core.preprocess`), one batch through
   the model (``ImageToSphere.predict``), coarse-to-fine to ``target_level``.
3. **Viewing-ray correction** with ``K``: each crop's rotations are turned from its virtual camera
   into the real camera frame (:mod:`pose_core.crops`).
4. **Summary**, batched over the objects (:mod:`pose_core.summary`).
5. **Translation**: from the median valid depth in the crop when an aligned depth image and ``K``
   are given, else ``nominal_distance_m`` along the crop's viewing ray (the optical axis without
   ``K``), with a covariance that says which (:mod:`pose_core.pinhole`).
6. **Shapes** (only with a ``shaper``, :class:`pose_core.shape_fusion.ShapeEstimator`): each object's shape
   reconstructed from the same crop, in its frame, in metres (sized by the crop's depth points when there are
   some), on ``ObjectEstimate.shape``.

**Tracking** (only when ``estimate`` gets a ``stamp_s`` and ``settings.temporal_filter`` is on;
:mod:`pose_core.tracking`): each object is associated with a track (``Box.id``, else the nearest
previous id-less box, else the whole image's); a track's previous posterior, diffused by the
motion model, is the prior of step 2 (applied inside the coarse-to-fine search), and the summary
of step 4 publishes, among near-equal peaks, the one nearest the track's previous mode
(``continuity_tie_nats``). Without a stamp, or with the filter off, every frame is estimated on
its own exactly as without tracking.

Outputs are :class:`ObjectEstimate` (numpy float64, quaternions ``(x, y, z, w)``, the 6x6
covariance in ``geometry_msgs/PoseWithCovariance`` order) in a :class:`FrameEstimate`, with the
boxes rejected and the notes a caller should log. Bad input raises :class:`ValueError` naming it
(an image that is not ``(H, W, 3)``, a bad ``K``); a bad box or depth never loses the frame.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pose_core import crops, grids, pinhole, preprocess, so3
from pose_core.pinhole import Region, TranslationEstimate
from pose_core.summary import summarize
from pose_core.tracking import (
    BRANCH_RADIUS,
    DiffusedPrior,
    Track,
    Tracker,
    choose_branch,
    compact_posteriors,
    mass_within,
)

__all__ = [
    "Box",
    "EstimatorSettings",
    "ObjectEstimate",
    "Rejection",
    "FrameEstimate",
    "PoseEstimator",
    "FALLBACK_INPUT_SIZE",
]

#: Model input side when neither the caller nor the checkpoint gives one.
FALLBACK_INPUT_SIZE = 224


@dataclass(frozen=True)
class Box:
    """A detection box in image pixels (``vision_msgs/BoundingBox2D`` without the angle).

    Attributes:
        center: ``(u, v)`` pixels, pixel centres at integers.
        size: ``(width, height)`` pixels.
        score: detector confidence; boxes are served highest first.
        id: the detector's id of the object (e.g. ``Detection2D.id``), passed through.
    """

    center: tuple[float, float]
    size: tuple[float, float]
    score: float = 1.0
    id: str = ""


@dataclass(frozen=True)
class EstimatorSettings:
    """What a caller may change between frames (swap the whole object; it is immutable).

    Attributes:
        target_level: coarse-to-fine target grid level (mode resolution
            :func:`pose_core.grids.resolution`); at least the model's base level.
        num_samples: rotation samples per object.
        num_modes, mode_radius_deg: separated modes reported and their separation (deg).
        nominal_distance_m: assumed distance along the viewing ray without depth (m).
        detection_crop_scale: crop side / a box's longer side.
        max_detections: most boxes served per frame (highest score first).
        max_crop_factor: a box whose crop side exceeds this multiple of the image's longer side
            is rejected (a detector's garbage box must not cost more than a frame).
        temporal_filter: track objects over frames (needs ``estimate(..., stamp_s=...)``): the
            previous posterior, diffused, is the prior of the next frame, and the published mode
            stays continuous; ``False``: every frame on its own (:mod:`pose_core.tracking`).
        filter_rotation_std_deg: std (deg, per axis) of a tracked object's rotation change over one
            second, a random walk: over ``dt`` seconds ``filter_rotation_std_deg * sqrt(dt)``.
        filter_outlier_weight: in ``(0, 1)``, the prior's uniform share: the chance per frame of an
            arbitrary turn; larger follows real sudden changes sooner, smaller resists flips more.
        continuity_tie_nats: peaks whose log-density is within this of the maximum count as equal,
            and the one nearest the track's previous mode is published (0: the densest always).
        track_timeout_s: a track not seen for longer is dropped (s); a stamp going backwards or
            jumping by more than this drops all.
        refine: refine each object's rotation by render-and-compare (:mod:`pose_core.refine`) from the
            distribution's ``refine_modes`` top modes, ``refine_steps`` Adam steps each; needs the
            estimator's ``refiner`` (a :class:`~pose_core.refine.NeuralMesh` of the object). Rotation models only.
    """

    target_level: int = 5
    num_samples: int = 100
    num_modes: int = 4
    mode_radius_deg: float = 15.0
    nominal_distance_m: float = 1.0
    detection_crop_scale: float = 1.2
    max_detections: int = 8
    max_crop_factor: float = 4.0
    temporal_filter: bool = True
    filter_rotation_std_deg: float = 45.0
    filter_outlier_weight: float = 0.05
    continuity_tie_nats: float = 1.0
    track_timeout_s: float = 1.0
    refine: bool = False
    refine_modes: int = 4
    refine_steps: int = 7

    def __post_init__(self) -> None:
        checks = {
            "target_level": 0 <= self.target_level <= 8,
            "num_samples": self.num_samples >= 1,
            "num_modes": self.num_modes >= 1,
            "mode_radius_deg": 0 < self.mode_radius_deg <= 180,
            "nominal_distance_m": self.nominal_distance_m > 0 and math.isfinite(self.nominal_distance_m),
            "detection_crop_scale": self.detection_crop_scale > 0 and math.isfinite(self.detection_crop_scale),
            "max_detections": self.max_detections >= 1,
            "max_crop_factor": self.max_crop_factor >= 1 and math.isfinite(self.max_crop_factor),
            "temporal_filter": isinstance(self.temporal_filter, (bool, np.bool_)),
            "filter_rotation_std_deg": 0 < self.filter_rotation_std_deg <= 1000,
            "filter_outlier_weight": 0 < self.filter_outlier_weight < 1,
            "continuity_tie_nats": 0 <= self.continuity_tie_nats < math.inf,
            "track_timeout_s": 0 < self.track_timeout_s < math.inf,
            "refine": isinstance(self.refine, (bool, np.bool_)),
            "refine_modes": 1 <= self.refine_modes <= 64,
            "refine_steps": 0 <= self.refine_steps <= 1000,
        }
        bad = [f"{name}={getattr(self, name)!r}" for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"bad estimator settings: {', '.join(bad)}")

    @staticmethod
    def level_for_resolution(mode_resolution_deg: float) -> int:
        """Grid level whose cells are at most ``mode_resolution_deg`` (deg) wide, at least 3."""
        return max(3, grids.level_for_resolution(math.radians(mode_resolution_deg)))


@dataclass(frozen=True)
class ObjectEstimate:
    """One object's pose distribution summary in the camera frame (numpy float64).

    Attributes:
        index: position of its box in the ``boxes`` given (0 without boxes).
        box: that :class:`Box`, or ``None`` for the whole image.
        region: the crop ``(u0, v0, u1, v1)`` it was predicted on (may extend past the image).
        orientation: ``(4,)`` mode (object -> camera), quaternion x, y, z, w (``w >= 0``).
        translation: ``(3,)`` m; ``translation_source`` ``"depth"`` or ``"nominal"``.
        covariance: ``(6, 6)`` of ``(x, y, z, rot X, rot Y, rot Z)`` (m², rad²), ordered as
            ``geometry_msgs/PoseWithCovariance``: translation block from the translation estimate,
            rotation block the left-perturbation covariance about the mode (camera axes), cross
            terms 0 (the rotation model does not see the translation).
        samples: ``(N, 4)`` rotations drawn from the distribution; ``sample_weights`` ``(N,)``.
        entropy: nats (Haar volume ``pi**2``); ``max_log_density`` at the (published) mode;
            ``mode_resolution`` rad.
        modes: ``(M, 4)`` separated local maxima, decreasing density, with ``mode_mass`` ``(M,)``
            (mass within ``mode_radius_deg``) and ``mode_log_density`` ``(M,)``.
        track_id: the object's track (``Box.id``, ``"#n"`` for an id-less box, ``"image"`` for the
            whole image); ``""`` when not tracked (no ``stamp_s``, or ``temporal_filter`` off).
        filtered: a prior from the track's previous frames was applied this frame (the
            distribution is the filtered posterior; ``False`` on a track's first frame).
        sample_positions: ``(N, 3)`` m, the translation of each sample, for a model of SE(3) (the
            samples are then joint poses); ``None`` for a rotation model.
        shape: the object's reconstructed shape in its own frame (:class:`pose_core.shape_fusion.ShapeEstimate`,
            points in metres), when the estimator has a ``shaper``; ``None`` otherwise.

    With an SE(3) model (``model.pose_space == "se3"``, e.g. :class:`pose_core.models.SpyroPose`)
    ``translation`` is the learned joint mode's (``translation_source`` ``"model"``), ``covariance``
    the distribution's full 6x6 second moment about the mode with its real cross terms, and
    ``entropy``, ``max_log_density``, ``modes`` those of its rotation marginal.
    """

    index: int
    box: Box | None
    region: Region
    orientation: np.ndarray
    translation: np.ndarray
    translation_source: str
    covariance: np.ndarray
    samples: np.ndarray
    sample_weights: np.ndarray
    entropy: float
    max_log_density: float
    mode_resolution: float
    modes: np.ndarray
    mode_mass: np.ndarray
    mode_log_density: np.ndarray
    track_id: str = ""
    filtered: bool = False
    sample_positions: np.ndarray | None = None
    shape: Any = None

    @property
    def rotation(self) -> np.ndarray:
        """The mode as a rotation matrix ``(3, 3)``."""
        return so3.quat_to_matrix(torch.from_numpy(self.orientation)).numpy()


@dataclass(frozen=True)
class Rejection:
    """A box that was not served: its position in ``boxes``, the box and why."""

    index: int
    box: Box
    reason: str


@dataclass
class FrameEstimate:
    """Everything one :meth:`PoseEstimator.estimate` call produced.

    Attributes:
        objects: one :class:`ObjectEstimate` per served object, highest box score first.
        rejected: boxes that were not served, with the reason.
        dropped: boxes beyond ``max_detections`` (lowest scores), not served.
        notes: things the caller should log (e.g. a depth image that could not be used), each
            ``(kind, text)``, ``kind`` naming the input (``"depth"``).
        timings_ms: wall time of the steps (``crops``, ``model``, ``summary``, ``translation``,
            ``total``); on CUDA the model step is synchronised. Tracked frames add ``tracking``: building
            the priors and storing the tracks' posteriors (inside ``model`` and ``summary``; evaluating
            the prior during the search is in ``model`` only). With ``settings.refine``: ``refine``, the
            render-and-compare refinement of every object (inside ``summary``).
    """

    objects: list[ObjectEstimate] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    dropped: int = 0
    notes: list[tuple[str, str]] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)


class PoseEstimator:
    """Per-frame pose estimation with one model (see the module docstring).

    Args:
        model: an ``ImageToSphere`` in eval mode (``load_model``), on any device.
        settings: :class:`EstimatorSettings`; replace ``estimator.settings`` to change them.
        input_size: crop side fed to the model; default ``model.input_size`` (what the checkpoint
            was trained on), else :data:`FALLBACK_INPUT_SIZE`.
        seed: of the sampling generator (the samples of a frame are reproducible per estimator).
        refiner: a :class:`~pose_core.refine.NeuralMesh` of the object, used when ``settings.refine`` is on
            (``None``: refinement unavailable; set :attr:`refiner` later to enable it).
        shaper: a :class:`~pose_core.shape_fusion.ShapeEstimator`: every object's shape is reconstructed from
            its crop after its pose (``ObjectEstimate.shape``; timing ``"shape"``); ``None``: no shapes.

    Not thread-safe: call :meth:`estimate` from one thread (the node's worker).
    """

    def __init__(self, model: Any, settings: EstimatorSettings | None = None, input_size: int | None = None,
                 seed: int = 0, refiner: Any = None, shaper: Any = None):
        self.model = model
        self.refiner = refiner
        self.shaper = shaper
        self.input_size = int(input_size or getattr(model, "input_size", None) or FALLBACK_INPUT_SIZE)
        if self.input_size < 1:
            raise ValueError(f"input_size must be >= 1, got {self.input_size}")
        self.settings = settings if settings is not None else EstimatorSettings()
        self._generator = torch.Generator().manual_seed(seed)
        self._tracker = Tracker(self._settings.track_timeout_s)

    @property
    def settings(self) -> EstimatorSettings:
        return self._settings

    @settings.setter
    def settings(self, value: EstimatorSettings) -> None:
        if not isinstance(value, EstimatorSettings):
            raise TypeError(f"settings must be EstimatorSettings, got {type(value).__name__}")
        self._settings = value

    def reset_tracks(self) -> None:
        """Forget every tracked object (e.g. the camera was moved, or a bag starts again)."""
        self._tracker.reset()

    @property
    def tracks(self) -> list[Track]:
        """The tracks held now (copies are not made: read, don't modify)."""
        return list(self._tracker.tracks.values())

    @property
    def target_level(self) -> int:
        """The coarse-to-fine target level used: the settings', never below the model's base level
        (an SE(3) model: its pyramid's finest level)."""
        if getattr(self.model, "pose_space", "so3") == "se3":
            return self.model.config.levels - 1
        return max(self._settings.target_level, self.model.inference.base_level)

    # ------------------------------------------------------------------ one frame
    def estimate(
        self,
        rgb: np.ndarray,
        K: np.ndarray | list[float] | None = None,
        depth: np.ndarray | None = None,
        boxes: list[Box] | None = None,
        stamp_s: float | None = None,
    ) -> FrameEstimate:
        """Pose estimates of the objects in one frame.

        Args:
            rgb: ``(H, W, 3)`` uint8 RGB (or float in [0, 1]).
            K: intrinsics ``(3, 3)`` or the 9 values of ``CameraInfo.k``; ``None``: no viewing-ray
                correction, translations along the optical axis.
            depth: ``(H, W)`` depth in m aligned with ``rgb`` (0, NaN, inf: no measurement);
                ignored with a note when its size differs or there is no ``K``.
            boxes: detection boxes; ``None``: the whole image is one object; ``[]``: no object.
            stamp_s: the image's time (s, e.g. its header stamp): with ``temporal_filter`` on, objects
                are tracked (see the module docstring); ``None``: this frame on its own, tracks untouched.

        Raises:
            ValueError: ``rgb`` is not an RGB image, ``K`` is not valid intrinsics, or ``stamp_s`` is not finite.
        """
        t0 = time.perf_counter()
        s = self._settings
        rgb = preprocess.check_rgb(rgb)
        height, width = rgb.shape[:2]
        Km = None if K is None else pinhole.intrinsics_matrix(K)
        frame = FrameEstimate()
        depth = self._usable_depth(depth, Km, width, height, frame)
        tracking = stamp_s is not None and bool(s.temporal_filter)
        if tracking:
            stamp_s = float(stamp_s)  # type: ignore[arg-type]
            if not math.isfinite(stamp_s):
                raise ValueError(f"stamp_s must be finite seconds, got {stamp_s!r}")
            self._tracker.timeout_s = s.track_timeout_s
            reset = self._tracker.begin_frame(stamp_s)
            if reset is not None:
                frame.notes.append(("stamp", f"{reset}: tracks reset"))

        if getattr(self.model, "pose_space", "so3") == "se3":
            if s.refine:
                frame.notes.append(("refine", "refine applies to rotation models only: this SE(3) model's "
                                              "estimates are not refined"))
            return self._with_shapes(rgb, Km, depth, self._estimate_se3(rgb, Km, depth, boxes, frame, t0))

        # 1-2. objects and their crops
        objects: list[tuple[int, Box | None, Region]] = []
        inputs: list[torch.Tensor] = []
        if boxes is None:
            x, region = preprocess.model_input(rgb, self.input_size)
            objects.append((0, None, region))
            inputs.append(x)
        else:
            order = sorted(range(len(boxes)), key=lambda i: -_score(boxes[i]))
            frame.dropped = max(0, len(order) - s.max_detections)
            for i in order[: s.max_detections]:
                box = boxes[i]
                try:
                    region = self._box_region(box, width, height)
                    inputs.append(preprocess.crop_input(rgb, region, self.input_size))
                except (ValueError, TypeError) as exc:
                    frame.rejected.append(Rejection(i, box, str(exc)))
                    continue
                objects.append((i, box, region))
        t1 = time.perf_counter()
        frame.timings_ms["crops"] = 1000 * (t1 - t0)
        if not objects:
            frame.timings_ms["total"] = frame.timings_ms["crops"]
            return frame

        # 2. one batch through the model (with the tracks' priors, each in its crop's frame)
        centers = [pinhole.region_center(region, width, height) for _, _, region in objects]
        corrections = None
        if Km is not None:
            corrections = torch.stack([crops.crop_ray_rotation(Km, c) for c in centers])
        tracks: list[Track | None] = [None] * len(objects)
        prior = None
        if tracking:
            tracks = self._tracker.associate([box for _, box, _ in objects], stamp_s)
            t_track = time.perf_counter()
            prior = self._prior(tracks, stamp_s, corrections)
            frame.timings_ms["tracking"] = 1000 * (time.perf_counter() - t_track)
        dist = self.model.predict(torch.cat(inputs), target_level=self.target_level, log_prior=prior)
        if dist.log_mass.device.type == "cuda":
            torch.cuda.synchronize(dist.log_mass.device)
        t2 = time.perf_counter()
        frame.timings_ms["model"] = 1000 * (t2 - t1)

        # 3-4. the batched summary in the camera frame (viewing-ray corrections), continuous with the tracks
        reference = None
        if tracking and dist.log_mass.device.type != "cpu":
            dist = dist.to("cpu")  # once: the summary and the tracks share its cached cell quaternions
        bases = [None if t is None else t.basis(stamp_s)[2] for t in tracks] if tracking else []
        if any(m is not None for m in bases):
            reference = np.full((len(objects), 4), np.nan)
            for j, m in enumerate(bases):
                if m is not None:
                    reference[j] = m
        summary = summarize(
            dist, corrections, num_samples=s.num_samples, num_modes=s.num_modes,
            mode_radius=math.radians(s.mode_radius_deg), generator=self._generator,
            reference=reference, tie_nats=s.continuity_tie_nats,
        )
        if s.refine:
            t_ref = time.perf_counter()
            summary = self._refine(rgb, objects, dist, corrections, summary, frame)
            frame.timings_ms["refine"] = 1000 * (time.perf_counter() - t_ref)
        if tracking:
            t_track = time.perf_counter()
            self._update_tracks(tracks, objects, dist, corrections, summary, stamp_s)
            frame.timings_ms["tracking"] += 1000 * (time.perf_counter() - t_track)
        t3 = time.perf_counter()
        frame.timings_ms["summary"] = 1000 * (t3 - t2)

        # 5. translations, and the estimates
        for j, ((index, box, region), center) in enumerate(zip(objects, centers, strict=True)):
            translation = self._translation(Km, depth, region, center, frame)
            cov6 = np.zeros((6, 6))
            cov6[:3, :3] = translation.covariance
            cov6[3:, 3:] = summary.covariance[j]
            m = int(summary.mode_count[j])
            frame.objects.append(
                ObjectEstimate(
                    index=index, box=box, region=tuple(int(v) for v in region),
                    orientation=summary.orientation[j], translation=np.asarray(translation.translation, np.float64),
                    translation_source=translation.source, covariance=cov6, samples=summary.samples[j],
                    sample_weights=summary.sample_weights[j], entropy=float(summary.entropy[j]),
                    max_log_density=float(summary.max_log_density[j]), mode_resolution=summary.mode_resolution,
                    modes=summary.modes[j, :m], mode_mass=summary.mode_mass[j, :m],
                    mode_log_density=summary.mode_log_density[j, :m],
                    track_id="" if tracks[j] is None else tracks[j].track_id,
                    filtered=prior is not None and bool(prior.active[j]),
                )
            )
        t4 = time.perf_counter()
        frame.timings_ms["translation"] = 1000 * (t4 - t3)
        frame.timings_ms["total"] = 1000 * (t4 - t0)
        return self._with_shapes(rgb, Km, depth, frame)

    def _with_shapes(self, rgb: np.ndarray, K: np.ndarray | None, depth: np.ndarray | None,
                     frame: FrameEstimate) -> FrameEstimate:
        """``frame`` with every object's ``shape`` (when there is a ``shaper``), its time in ``timings_ms``."""
        if self.shaper is None or not frame.objects:
            return frame
        t = time.perf_counter()
        shapes = self.shaper.estimate(rgb, K, depth, frame.objects)
        frame.objects = [dataclasses.replace(o, shape=sh) for o, sh in zip(frame.objects, shapes, strict=True)]
        ms = 1000 * (time.perf_counter() - t)
        frame.timings_ms["shape"] = ms
        frame.timings_ms["total"] = frame.timings_ms.get("total", 0.0) + ms
        return frame

    def warm_up(self, width: int = 224, height: int = 224, boxes: int = 0) -> float:
        """Run one frame on a black image (builds the model's tables and caches); returns its ms."""
        t = time.perf_counter()
        rgb = np.zeros((height, width, 3), np.uint8)
        K = [float(max(width, height)), 0.0, (width - 1) / 2, 0.0, float(max(width, height)), (height - 1) / 2,
             0.0, 0.0, 1.0]
        box_list = None
        if boxes:
            box_list = [Box(((width - 1) / 2, (height - 1) / 2), (width / 2, height / 2))] * boxes
        self.estimate(rgb, K, boxes=box_list)
        return 1000 * (time.perf_counter() - t)

    # ------------------------------------------------------------------ SE(3) models
    def _estimate_se3(self, rgb: np.ndarray, K: np.ndarray | None, depth: np.ndarray | None, boxes: list[Box] | None,
                      frame: FrameEstimate, t0: float) -> FrameEstimate:
        """:meth:`estimate` for a model of SE(3) (``model.pose_space == "se3"``): each object's crop is
        centred on an initial translation (from its box and the object's apparent size, from the
        median depth in the box when there is depth, or ``nominal_distance_m`` along the optical axis
        for the whole image), and the model's joint distribution gives rotation and translation.
        Not tracked: the temporal filter applies to rotation models only."""
        s = self._settings
        height, width = rgb.shape[:2]
        if K is None:
            f = float(max(width, height))
            K = np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])
            frame.notes.append(("intrinsics", f"no intrinsics K: an SE(3) model needs them; assuming f = {f:g} px "
                                               "at the image centre (translations are not metric)"))
        obj = self.model.object
        cfg = self.model.config
        objects: list[tuple[int, Box | None, Region, np.ndarray, np.ndarray]] = []
        inputs: list[torch.Tensor] = []
        if boxes is None:
            work = [(0, None)]
        else:
            order = sorted(range(len(boxes)), key=lambda i: -_score(boxes[i]))
            frame.dropped = max(0, len(order) - s.max_detections)
            work = [(i, boxes[i]) for i in order[: s.max_detections]]
        for i, box in work:
            try:
                t_hat = self._se3_guess(K, depth, box, width, height, frame)
                region, K_crop = pinhole.object_crop(K, t_hat, obj.radius_m, self.input_size, cfg.crop_padding)
                side = region[2] - region[0]
                if side > s.max_crop_factor * max(width, height):
                    raise ValueError(f"crop side {side} px is more than max_crop_factor {s.max_crop_factor:g} x the "
                                     f"{width}x{height} image")
                inputs.append(preprocess.crop_input(rgb, region, self.input_size))
            except (ValueError, TypeError) as exc:
                if box is None:
                    raise
                frame.rejected.append(Rejection(i, box, str(exc)))
                continue
            objects.append((i, box, tuple(int(v) for v in region), t_hat, K_crop))
        t1 = time.perf_counter()
        frame.timings_ms["crops"] = 1000 * (t1 - t0)
        if not objects:
            frame.timings_ms["total"] = frame.timings_ms["crops"]
            return frame

        K_crops, t_hats = np.stack([o[4] for o in objects]), np.stack([o[3] for o in objects])
        dist = self.model.predict(torch.cat(inputs), K_crops, t_hats)
        if dist.log_mass.device.type == "cuda":
            torch.cuda.synchronize(dist.log_mass.device)
        dist = dist.to("cpu")
        t2 = time.perf_counter()
        frame.timings_ms["model"] = 1000 * (t2 - t1)

        R_mode, t_mode = dist.mode()
        cov6 = dist.covariance().to(torch.float64).numpy()
        R_s, t_s = dist.sample(s.num_samples, generator=self._generator)
        rotation = summarize(dist.rotation_marginal(), None, num_samples=1, num_modes=s.num_modes,
                             mode_radius=math.radians(s.mode_radius_deg), generator=self._generator)
        q_mode = so3.matrix_to_quat(R_mode.to(torch.float64)).numpy()
        q_samples = so3.matrix_to_quat(R_s.to(torch.float64)).numpy()
        t_samples = t_s.to(torch.float64).numpy()
        t_mode = t_mode.to(torch.float64).numpy()
        t3 = time.perf_counter()
        frame.timings_ms["summary"] = 1000 * (t3 - t2)
        for j, (index, box, region, _, _) in enumerate(objects):
            m = int(rotation.mode_count[j])
            frame.objects.append(
                ObjectEstimate(
                    index=index, box=box, region=region, orientation=q_mode[j], translation=t_mode[j],
                    translation_source="model", covariance=cov6[j], samples=q_samples[j],
                    sample_weights=np.full(s.num_samples, 1.0 / s.num_samples), entropy=float(rotation.entropy[j]),
                    max_log_density=float(rotation.max_log_density[j]), mode_resolution=float(dist.mode_resolution()),
                    modes=rotation.modes[j, :m], mode_mass=rotation.mode_mass[j, :m],
                    mode_log_density=rotation.mode_log_density[j, :m], sample_positions=t_samples[j],
                )
            )
        frame.timings_ms["translation"] = 0.0
        frame.timings_ms["total"] = 1000 * (time.perf_counter() - t0)
        return frame

    def _se3_guess(self, K: np.ndarray, depth: np.ndarray | None, box: Box | None, width: int, height: int,
                   frame: FrameEstimate) -> np.ndarray:
        """Initial translation ``(3,)`` (m) an SE(3) model's crop is centred on (see :meth:`_estimate_se3`)."""
        obj = self.model.object
        if box is None:
            center = ((width - 1) / 2, (height - 1) / 2)
            return pinhole.translation_from_nominal(self._settings.nominal_distance_m, K, center).translation
        t_hat = pinhole.translation_from_box(K, box.center, box.size, obj.apparent_size_m)  # checks the box
        (cu, cv), (w, h) = box.center, box.size
        if depth is not None:
            region = (cu - w / 2, cv - h / 2, cu + w / 2, cv + h / 2)
            try:
                z = pinhole.median_depth(depth, region)
            except ValueError:
                z = None
            if z is not None:  # the visible surface is in front of the centre by about half the object
                return t_hat * ((z + 0.5 * obj.radius_m) / t_hat[2])
            frame.notes.append(("depth", f"no valid depth in box {box.center}, {box.size}; using its size"))
        return t_hat

    # ------------------------------------------------------------------ steps
    def _refine(self, rgb: np.ndarray, objects: list, dist: Any, corrections: torch.Tensor | None,
                summary: Any, frame: FrameEstimate) -> Any:
        """``summary`` with every object's rotation refined by render-and-compare (``settings.refine``)."""
        from pose_core.refine import RefineSettings, canonical_intrinsics, refine
        from pose_core.summary import with_refinement

        if self.refiner is None:
            frame.notes.append(("refine", "refine is on but no refiner (neural mesh) is loaded: not refined"))
            return summary
        s = self._settings
        size = int(self.refiner.input_size)
        crops = torch.cat([preprocess.crop_input(rgb, region, size) for _, _, region in objects])
        # the crop is framed as the distribution's model sees it: the canonical crop camera, object at (0, 0, 4)
        settings = RefineSettings(init="modes", num_modes=s.refine_modes, steps=s.refine_steps,
                                  num_samples=s.num_samples)
        result = refine(self.refiner, crops, canonical_intrinsics(size), dist, settings=settings,
                        generator=self._generator)
        return with_refinement(summary, result, dist, corrections)

    def _prior(self, tracks: list[Track | None], stamp_s: float, corrections: torch.Tensor | None
               ) -> DiffusedPrior | None:
        """The batch's prior from the tracks' previous posteriors; ``None`` when no object has one."""
        bases = [None if t is None else t.basis(stamp_s) for t in tracks]
        posteriors = [None if b is None else b[0] for b in bases]
        if all(p is None for p in posteriors):
            return None
        s = self._settings
        elapsed = [0.0 if b is None else max(0.0, stamp_s - b[1]) for b in bases]
        return DiffusedPrior.from_posteriors(
            posteriors, elapsed, math.radians(s.filter_rotation_std_deg), s.filter_outlier_weight, corrections,
        )

    def _update_tracks(self, tracks: list[Track | None], objects: list, dist: Any, corrections: torch.Tensor | None,
                       summary: Any, stamp_s: float) -> None:
        """Store each track's compact posterior (the branch it follows: :func:`~pose_core.tracking.choose_branch`)
        and published mode."""
        s = self._settings
        radius = BRANCH_RADIUS
        published = summary.orientation  # (B, 4)
        posteriors = compact_posteriors(dist, corrections, published, radius)
        mode_mass = mass_within(dist, summary.modes, radius, corrections).numpy()  # (B, k): the others' branches
        for j, t in enumerate(tracks):
            if t is not None:
                m = int(summary.mode_count[j])
                center, switched = choose_branch(published[j], posteriors[j].branch_mass, summary.modes[j, :m],
                                                 mode_mass[j, :m], radius, s.continuity_tie_nats)
                if switched:  # another mode holds much more mass: follow it from the next frame on
                    posteriors[j] = compact_posteriors(dist.select(j), None if corrections is None else
                                                       corrections[j : j + 1], center[None], radius)[0]
        for j, t in enumerate(tracks):
            if t is not None:
                self._tracker.update(t, stamp_s, objects[j][1], posteriors[j], published[j])

    def _box_region(self, box: Box, width: int, height: int) -> Region:
        """The square crop of ``box``; ValueError naming what is wrong with it (not finite, no area, larger
    than ``max_crop_factor`` times the image)."""
        s = self._settings
        region = pinhole.detection_region(box.center, box.size, s.detection_crop_scale)
        side = region[2] - region[0]
        limit = s.max_crop_factor * max(width, height)
        if side > limit:
            raise ValueError(
                f"crop side {side} px is more than max_crop_factor {s.max_crop_factor:g} x the {width}x{height} image"
            )
        return region  # a crop outside the image is refused by preprocess.crop_input

    @staticmethod
    def _usable_depth(
        depth: np.ndarray | None, K: np.ndarray | None, width: int, height: int, frame: FrameEstimate
    ) -> np.ndarray | None:
        if depth is None:
            return None
        depth = np.asarray(depth)
        if depth.ndim != 2 or depth.shape != (height, width):
            frame.notes.append(("depth", f"depth image of shape {depth.shape} does not match the {width}x{height} "
                                         "colour image; not used (is it aligned to the colour camera?)"))
            return None
        if K is None:
            frame.notes.append(("depth", "depth image given without camera intrinsics K; not used"))
            return None
        return depth

    def _translation(
        self, K: np.ndarray | None, depth: np.ndarray | None, region: Region, center: tuple[float, float],
        frame: FrameEstimate,
    ) -> TranslationEstimate:
        distance = self._settings.nominal_distance_m
        if depth is not None and K is not None:
            estimate = pinhole.translation_from_depth(K, depth, region)
            if estimate is not None:
                return estimate
            u0, v0, u1, v1 = pinhole.clip_region(region, depth.shape[1], depth.shape[0])
            values = depth[v0:v1, u0:u1]
            frame.notes.append(("depth", f"no valid depth in region {region} ({_describe_invalid(values)}); "
                                         f"using nominal_distance_m = {distance:g}"))
        if K is None:
            return pinhole.translation_from_nominal(distance)
        return pinhole.translation_from_nominal(distance, K, center)


def _score(box: Box) -> float:
    score = float(box.score)
    return score if math.isfinite(score) else -math.inf


def _describe_invalid(values: np.ndarray) -> str:
    """What the depths of a region without a valid one are: e.g. ``"all NaN"``, ``"0 or NaN"``, ``"all negative"``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return "empty"
    kinds = []
    for name, mask in (("NaN", np.isnan(v)), ("0", v == 0), ("infinite", np.isinf(v)), ("negative", v < 0)):
        if mask.any():
            kinds.append(name)
    return ("all " if len(kinds) == 1 else "") + " / ".join(kinds)

