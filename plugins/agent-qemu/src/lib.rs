//! A backend for the agent's stages (service `qemu`): guest disks as qcow2 files created with
//! the machine's `qemu-img`, snapshots inside them (`qemu-img snapshot`), downloads as
//! converted raw images, and images as files. Without a hypervisor, power actions are state
//! changes recorded in the guest (`state`), and CPU and NIC metrics say no hypervisor runs.
//!
//! Every function takes the agent's stage input `{"action", "guest", "args"}` and decides
//! `{"guest"?, "result"?, "stream"?}`.
//!
//! Configuration: `dir` (absolute; guests' disks go to `dir/guests/ID/`, images to
//! `dir/images/`), `qemu_img` (default `qemu-img`).

use std::path::{Path, PathBuf};
use std::process::Command;

use epi::{Decision, Plugin, PluginContext, Provider};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The service this backend provides.
pub const SERVICE: &str = "qemu";

/// What the agent hands each stage.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StageInput {
    /// The action being run.
    #[serde(default)]
    pub action: String,
    /// The guest (`null` for image actions).
    #[serde(default)]
    pub guest: Value,
    /// The stage's and the request's arguments.
    #[serde(default)]
    pub args: Value,
}

/// What a stage gives back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageOutput {
    /// The changed guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<Value>,
    /// The action's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// A byte stream: `{"path", "remove"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Value>,
}

fn guest_output(guest: Value) -> Result<Decision<StageOutput>, String> {
    Ok(Decision::Decided(StageOutput {
        guest: Some(guest),
        ..StageOutput::default()
    }))
}

fn result_output(result: Value) -> Result<Decision<StageOutput>, String> {
    Ok(Decision::Decided(StageOutput {
        result: Some(result),
        ..StageOutput::default()
    }))
}

/// The backend's settings.
#[derive(Clone, Debug)]
struct Settings {
    dir: PathBuf,
    qemu_img: String,
}

/// The plugin object.
pub struct QemuPlugin {
    settings: Settings,
}

impl QemuPlugin {
    /// Reads `dir` and `qemu_img`; errors name the key.
    pub fn from_context(context: &PluginContext) -> Result<Self, String> {
        let mut dir = None;
        let mut qemu_img = "qemu-img".to_owned();
        if let Value::Object(config) = &context.config {
            for (key, value) in config {
                match (key.as_str(), value.as_str()) {
                    ("dir", Some(path)) if path.starts_with('/') => dir = Some(PathBuf::from(path)),
                    ("qemu_img", Some(path)) if !path.is_empty() => qemu_img = path.to_owned(),
                    ("dir" | "qemu_img", _) => {
                        return Err(format!("agent-qemu configuration: `{key}`: expected an absolute path, found {value}"))
                    }
                    _ => return Err(format!("agent-qemu configuration: unknown key `{key}` (known: dir, qemu_img)")),
                }
            }
        }
        let dir = dir.ok_or(
            "agent-qemu configuration: `dir` (an absolute path for disks and images) is required",
        )?;
        for sub in ["guests", "images"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|err| {
                format!(
                    "agent-qemu: cannot create {}: {err}",
                    dir.join(sub).display()
                )
            })?;
        }
        Ok(QemuPlugin {
            settings: Settings { dir, qemu_img },
        })
    }
}

impl Plugin for QemuPlugin {
    fn app(&self) -> String {
        "agent-qemu".into()
    }

    fn services(&self) -> Vec<String> {
        vec![SERVICE.into()]
    }

    fn providers(&self) -> Vec<Provider> {
        vec![Provider::new(
            SERVICE,
            Qemu {
                settings: self.settings.clone(),
            },
        )
        .label("qemu-img")]
    }
}

/// The stage functions.
pub struct Qemu {
    settings: Settings,
}

impl Qemu {
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new(&self.settings.qemu_img)
            .args(args)
            .output()
            .map_err(|err| {
                format!(
                    "cannot run {} (install qemu-utils): {err}",
                    self.settings.qemu_img
                )
            })?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "qemu-img {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    fn guest_dir(&self, guest: &Value) -> Result<PathBuf, String> {
        let id = guest_id(guest)?;
        Ok(self.settings.dir.join("guests").join(id))
    }

    /// The disks a request concerns: `args.disk` or every disk of the guest.
    fn disks(&self, input: &StageInput) -> Result<Vec<(String, PathBuf)>, String> {
        let disks = input.guest["disks"].as_array().cloned().unwrap_or_default();
        let wanted = input.args.get("disk").and_then(Value::as_str);
        let found: Vec<(String, PathBuf)> = disks
            .iter()
            .filter_map(|disk| {
                Some((
                    disk["id"].as_str()?.to_owned(),
                    PathBuf::from(disk["path"].as_str()?),
                ))
            })
            .filter(|(id, _)| wanted.is_none_or(|w| w == id))
            .collect();
        match (found.is_empty(), wanted) {
            (true, Some(disk)) => Err(format!("guest has no disk {disk}")),
            (true, None) => Err("guest has no disks".into()),
            _ => Ok(found),
        }
    }

    fn info(&self, path: &Path) -> Result<Value, String> {
        let text = self.run(&["info", "--output=json", "-U", &path.to_string_lossy()])?;
        serde_json::from_str(&text).map_err(|err| format!("qemu-img info output: {err}"))
    }

    fn snapshots(&self, input: &StageInput) -> Result<Vec<Value>, String> {
        let mut list = Vec::new();
        for (disk, path) in self.disks(input)? {
            for snapshot in self.info(&path)?["snapshots"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                list.push(json!({
                    "name": snapshot["name"],
                    "disk": disk,
                    "created": snapshot["date-sec"],
                    "vm_state_size": snapshot["vm-state-size"],
                }));
            }
        }
        Ok(list)
    }

    fn name(input: &StageInput) -> Result<String, String> {
        let name = input.args["name"]
            .as_str()
            .ok_or("a snapshot name is required")?;
        if name.is_empty()
            || name.starts_with('.')
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "snapshot name {name:?} must be letters, digits, '-', '_' or '.'"
            ));
        }
        Ok(name.to_owned())
    }

    fn image_path(&self, input: &StageInput) -> Result<PathBuf, String> {
        let id = input.args["image"]
            .as_str()
            .or_else(|| input.args["id"].as_str())
            .ok_or("an image id is required")?;
        if id.is_empty()
            || id.starts_with('.')
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "image id {id:?} must be letters, digits, '-', '_' or '.'"
            ));
        }
        Ok(self.settings.dir.join("images").join(id))
    }
}

fn guest_id(guest: &Value) -> Result<&str, String> {
    let id = guest["id"].as_str().ok_or("the stage has no guest")?;
    if id.is_empty() || id.contains('/') || id.starts_with('.') {
        return Err(format!("guest id {id:?} cannot name a directory"));
    }
    Ok(id)
}

#[epi::provider]
impl Qemu {
    /// Creates the guest's disks (`disks: [{"size_mb": N}]`, default one 64 MiB disk) as qcow2
    /// files; the guest gets each disk's `id` and `path` and the state `stopped`.
    pub fn create_disks(&self, input: &StageInput) -> Result<Decision<StageOutput>, String> {
        let dir = self.guest_dir(&input.guest)?;
        std::fs::create_dir_all(&dir)
            .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
        let mut guest = input.guest.clone();
        let wanted = guest["disks"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![json!({"size_mb": 64})]);
        let mut disks = Vec::new();
        for (index, disk) in wanted.iter().enumerate() {
            let size = disk["size_mb"].as_u64().unwrap_or(64);
            let id = format!("disk{index}");
            let path = dir.join(format!("{id}.qcow2"));
            self.run(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                &path.to_string_lossy(),
                &format!("{size}M"),
            ])?;
            disks.push(json!({"id": id, "size_mb": size, "path": path}));
        }
        guest["disks"] = Value::Array(disks);
        guest["state"] = json!("stopped");
        guest_output(guest)
    }

    /// Removes the guest's disks.
    pub fn delete_disks(&self, input: &StageInput) -> Result<Decision<StageOutput>, String> {
        let dir = self.guest_dir(&input.guest)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|err| format!("cannot remove {}: {err}", dir.display()))?;
        }
        let mut guest = input.guest.clone();
        guest["state"] = json!("deleted");
        guest_output(guest)
    }

    /// Records a power action's effect (no hypervisor runs guests here).
    pub fn power(&self, input: &StageInput) -> Result<Decision<StageOutput>, String> {
        let state = match input.action.as_str() {
            "start" | "reboot" | "restart" => "running",
            "shutdown" | "poweroff" => "stopped",
            "suspend" => "suspended",
            other => return Err(format!("{other} is not a power action")),
        };
        let mut guest = input.guest.clone();
        guest["state"] = json!(state);
        guest_output(guest)
    }

    /// Disk sizes from `qemu-img info`; CPU and NIC metrics need a hypervisor, which this
    /// backend does not run, and say so.
    pub fn metrics(&self, input: &StageInput) -> Result<Decision<StageOutput>, String> {
        match input.action.as_str() {
            "metrics_disk" => {
                let mut disks = Vec::new();
                for (disk, path) in self.disks(input)? {
                    let info = self.info(&path)?;
                    disks.push(json!({"disk": disk, "virtual_size": info["virtual-size"], "actual_size": info["actual-size"]}));
                }
                result_output(Value::Array(disks))
            }
            other => result_output(
                json!({"metric": other, "available": false, "reason": "no hypervisor runs this guest (agent-qemu manages storage only)"}),
            ),
        }
    }

    /// Creates snapshot `args.name` in the guest's disks (or `args.disk`).
    pub fn snapshot_create(&self, input: &StageInput) -> Result<Decision<StageOutput>, String> {
        let name = Self::name(input)?;
        for (_, path) in self.disks(input)? {
            self.run(&["snapshot", "-c", &name, &path.to_string_lossy()])?;
        }
        result_output(json!({"name": name}))
    }

    /// Lists snapshots.
    pub fn snapshot_list(&self, input: &StageInput) -> Result<Decision<StageOutput>, String> {
        result_output(Value::Array(self.snapshots(input)?))
    }

    /// One snapshot (by name), in every disk that has it.
    pub fn snapshot_get(&self, input: &StageInput) -> Result<Decision<StageOutput>, String> {
        let name = Self::name(input)?;
        let found: Vec<Value> = self
            .snapshots(input)?
            .into_iter()
            .filter(|s| s["name"] == name.as_str())
            .collect();
        if found.is_empty() {
            return Err(format!("no snapshot {name}"));
        }
        result_output(Value::Array(found))
    }

    /// Deletes snapshot `args.name`.
    pub fn snapshot_delete(&self, input: &StageInput) -> Result<Decision<StageOutput>, String> {
        let name = Self::name(input)?;
        for (_, path) in self.disks(input)? {
            self.run(&["snapshot", "-d", &name, &path.to_string_lossy()])?;
        }
        result_output(json!({"deleted": name}))
    }

    /// Rolls the disks back to snapshot `args.name`.
    pub fn snapshot_rollback(&self, input: &StageInput) -> Result<Decision<StageOutput>, String> {
        let name = Self::name(input)?;
        for (_, path) in self.disks(input)? {
            self.run(&["snapshot", "-a", &name, &path.to_string_lossy()])?;
        }
        result_output(json!({"rolled_back_to": name}))
    }

    /// Converts snapshot `args.name` of one disk (`args.disk`, default the first) to a raw
    /// image and hands it over as a stream (the file is removed once opened).
    pub fn snapshot_download(&self, input: &StageInput) -> Result<Decision<StageOutput>, String> {
        let name = Self::name(input)?;
        let (disk, path) = self
            .disks(input)?
            .into_iter()
            .next()
            .ok_or("guest has no disks")?;
        let out = self.guest_dir(&input.guest)?.join(format!(
            ".download-{disk}-{name}-{}.raw",
            std::process::id()
        ));
        self.run(&[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            "-l",
            &format!("snapshot.name={name}"),
            &path.to_string_lossy(),
            &out.to_string_lossy(),
        ])?;
        Ok(Decision::Decided(StageOutput {
            stream: Some(json!({"path": out, "remove": true})),
            ..StageOutput::default()
        }))
    }

    /// Fetches an image: copies `args.source` (a local file) to the images directory as
    /// `args.id`.
    pub fn image_fetch(&self, input: &StageInput) -> Result<Decision<StageOutput>, String> {
        let target = self.image_path(input)?;
        let source = input.args["source"]
            .as_str()
            .ok_or("an image source (a local file) is required")?;
        std::fs::copy(source, &target).map_err(|err| format!("cannot copy {source}: {err}"))?;
        result_output(
            json!({"id": target.file_name().map(|n| n.to_string_lossy().into_owned()), "path": target}),
        )
    }

    /// Lists images.
    pub fn image_list(&self, _input: &StageInput) -> Result<Decision<StageOutput>, String> {
        let dir = self.settings.dir.join("images");
        let mut images: Vec<Value> = std::fs::read_dir(&dir)
            .map_err(|err| format!("cannot list {}: {err}", dir.display()))?
            .flatten()
            .filter(|entry| entry.path().is_file())
            .map(|entry| {
                json!({"id": entry.file_name().to_string_lossy(), "size": entry.metadata().map(|m| m.len()).unwrap_or(0)})
            })
            .collect();
        images.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        result_output(Value::Array(images))
    }

    /// One image's `qemu-img info`.
    pub fn image_get(&self, input: &StageInput) -> Result<Decision<StageOutput>, String> {
        let path = self.image_path(input)?;
        if !path.exists() {
            return Err(format!(
                "no image {}",
                path.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ));
        }
        result_output(self.info(&path)?)
    }

    /// Deletes an image.
    pub fn image_delete(&self, input: &StageInput) -> Result<Decision<StageOutput>, String> {
        let path = self.image_path(input)?;
        std::fs::remove_file(&path)
            .map_err(|err| format!("cannot delete {}: {err}", path.display()))?;
        result_output(
            json!({"deleted": path.file_name().map(|n| n.to_string_lossy().into_owned())}),
        )
    }
}

epi::export_plugin!(QemuPlugin, try QemuPlugin::from_context);
