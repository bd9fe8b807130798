"""Settings: one typed object that round-trips through JSON, migrates old schema versions and
survives damaged files."""
import json

from app.settings import (
    FILE_NAME,
    MAX_RECENT,
    SCHEMA_VERSION,
    Settings,
    config_dir,
    load_settings,
    migrate,
    save_settings,
)


def test_round_trip_through_the_config_folder(settings_dir, tmp_path):
    assert config_dir() == settings_dir
    s = Settings(device="cuda", precision="bf16", backend="onnx", window_geometry="AAA=", demo_shown=True)
    for i in range(MAX_RECENT + 3):
        s.add_recent(str(tmp_path / f"scan{i}.nii.gz"))
    s.add_recent(str(tmp_path / "scan5.nii.gz"))
    path = save_settings(s)
    assert path == settings_dir / FILE_NAME
    loaded = load_settings()
    assert loaded == s
    assert len(loaded.recent_files) == MAX_RECENT and loaded.recent_files[0].endswith("scan5.nii.gz")
    assert loaded.last_folder == str(tmp_path)
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION


def test_version_1_files_are_migrated(settings_dir):
    settings_dir.mkdir(parents=True)
    old = {"schema_version": 1, "recent": ["/data/a.nii.gz"], "device_preference": "cpu",
           "window": "Zm9v", "last_folder": "/data"}
    (settings_dir / FILE_NAME).write_text(json.dumps(old))
    s = load_settings()
    assert s.schema_version == SCHEMA_VERSION
    assert s.recent_files == ["/data/a.nii.gz"] and s.device == "cpu" and s.window_geometry == "Zm9v"
    assert s.last_folder == "/data" and s.precision == "fp32"
    assert migrate({"recent": []})["schema_version"] == SCHEMA_VERSION     # no version: the first one


def test_damaged_or_unknown_settings_fall_back_to_defaults(settings_dir):
    settings_dir.mkdir(parents=True)
    path = settings_dir / FILE_NAME
    path.write_text("{not json")
    assert load_settings() == Settings()
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "device": "tpu", "recent_files": "x",
                                "precision": "fp16", "surprise": 1}))
    s = load_settings()
    assert s.device == "auto" and s.recent_files == [] and s.precision == "fp16"
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 5, "device": "cpu"}))
    assert load_settings() == Settings()


def test_the_main_window_saves_its_layout_on_close(qtbot, settings_dir):
    from app.main_window import MainWindow

    window = MainWindow(Settings())
    qtbot.addWidget(window)
    window.close()
    saved = load_settings()
    assert saved.window_geometry and saved.window_state


def test_the_pacs_cache_limit_is_kept_and_a_nonsense_one_is_the_default():
    assert Settings.from_dict({"pacs_cache_limit_gib": 50}).pacs_cache_limit_gib == 50
    assert Settings.from_dict({"pacs_cache_limit_gib": 0}).pacs_cache_limit_gib == Settings().pacs_cache_limit_gib
