//! The typed options of a run that no lower layer defines: the training mode (a QS-Attn mode or
//! plain CUT) and the device. The other named options are the enums of the layers that use
//! them (`ops::QsMode`, `ops::LocalLayout`, `losses::GanMode`, `nets::init::InitType`,
//! `data::Direction`, `train::precision::Precision`), each the one source of its names.
use tch::{Device, TchError};

use crate::choices::{alternatives, Choice};
use crate::error::invalid;
use crate::ops::QsMode;

/// The training mode: a QS-Attn mode, or `none` (plain CUT: every slot samples at random).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode(pub Option<QsMode>);

impl Mode {
    /// The name of plain CUT.
    pub const NONE: &'static str = "none";

    /// Every mode's name: the QS-Attn modes', then `none`.
    pub fn names() -> Vec<&'static str> {
        let mut names = QsMode::names();
        names.push(Self::NONE);
        names
    }

    pub fn as_str(self) -> &'static str {
        self.0.map_or(Self::NONE, QsMode::name)
    }

    pub fn qs(self) -> Option<QsMode> {
        self.0
    }
}

impl std::str::FromStr for Mode {
    type Err = TchError;
    fn from_str(s: &str) -> Result<Self, TchError> {
        if s == Self::NONE {
            return Ok(Mode(None));
        }
        QsMode::parse_name(s)
            .map(|m| Mode(Some(m)))
            .map_err(|_| invalid(format!("mode must be {}, got '{s}'", alternatives(&Self::names()))))
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

crate::serde_as_text!(Mode);

/// The training device as written: `cpu`, `cuda` (the current CUDA device, 0) or `cuda:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainDevice {
    Cpu,
    Cuda,
    CudaIndex(usize),
}

impl TrainDevice {
    /// The accepted forms, as listed to users.
    pub const NAMES: [&'static str; 3] = ["cpu", "cuda", "cuda:N"];

    pub fn device(self) -> Device {
        match self {
            TrainDevice::Cpu => Device::Cpu,
            TrainDevice::Cuda => Device::Cuda(0),
            TrainDevice::CudaIndex(i) => Device::Cuda(i),
        }
    }
}

impl std::str::FromStr for TrainDevice {
    type Err = TchError;
    fn from_str(s: &str) -> Result<Self, TchError> {
        match s {
            "cpu" => Ok(TrainDevice::Cpu),
            "cuda" => Ok(TrainDevice::Cuda),
            other => match other.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
                Some(i) => Ok(TrainDevice::CudaIndex(i)),
                None => Err(invalid(format!("device must be {}, got '{other}'", alternatives(&Self::NAMES)))),
            },
        }
    }
}

impl std::fmt::Display for TrainDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrainDevice::Cpu => f.write_str("cpu"),
            TrainDevice::Cuda => f.write_str("cuda"),
            TrainDevice::CudaIndex(i) => write!(f, "cuda:{i}"),
        }
    }
}

crate::serde_as_text!(TrainDevice);
