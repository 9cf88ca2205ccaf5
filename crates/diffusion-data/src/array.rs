//! The values every reader and writer shares: a row-major 2-D array of points, the shape of
//! the images its rows may be, and why data could not be read or written.

/// Why data could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file's contents are not a valid array.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A parameter or value is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// The shape of one image: channels, height, width (row-major pixels, channel-first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageShape {
    /// Colour channels (1 for grey, 3 for RGB).
    pub channels: usize,
    /// Rows of pixels.
    pub height: usize,
    /// Pixels per row.
    pub width: usize,
}

impl ImageShape {
    /// The values of one image, `channels * height * width`.
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Whether the image has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape of the trailing dimensions of an array, `[h, w]` or `[c, h, w]`; `None` for
    /// any other rank.
    pub fn of_item_dims(dims: &[usize]) -> Option<Self> {
        match *dims {
            [height, width] => Some(Self {
                channels: 1,
                height,
                width,
            }),
            [channels, height, width] => Some(Self {
                channels,
                height,
                width,
            }),
            _ => None,
        }
    }
}

impl std::fmt::Display for ImageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

/// A dense row-major `[rows, cols]` array of f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Array2 {
    /// Number of rows (points).
    pub rows: usize,
    /// Number of columns (dimensions).
    pub cols: usize,
    /// Row-major values, `rows * cols` of them.
    pub data: Vec<f32>,
}

impl Array2 {
    /// Wraps row-major data; `data.len()` must be `rows * cols`.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, DataError> {
        if data.len() != rows * cols {
            return Err(DataError::Invalid(format!(
                "array of {} values cannot have shape [{rows}, {cols}]",
                data.len()
            )));
        }
        Ok(Self { rows, cols, data })
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Errors unless every value is finite; names the first bad row and column (0-based).
    pub fn check_finite(&self, path: &str) -> Result<(), DataError> {
        match self.data.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => Err(DataError::Format {
                path: path.into(),
                message: format!(
                    "non-finite value {} at row {}, column {}",
                    self.data[i],
                    i / self.cols.max(1),
                    i % self.cols.max(1)
                ),
            }),
        }
    }
}
