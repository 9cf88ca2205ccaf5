//! A folder of PNG files as image rows: each file one image, in file-name order, grey (1
//! channel) or colour (3 channels, RGB; an alpha channel is dropped, a palette expanded, 16-bit
//! samples cut to 8), rows flattened channel-first as the `.npy` and IDX readers give them.

use std::path::Path;

use crate::array::{Array2, DataError, ImageShape};

/// Reads every `.png` file in `dir` (other files are ignored); all must have one size and one
/// channel count.
pub fn read_folder(dir: &Path) -> Result<(Array2, ImageShape), DataError> {
    let io_err = |path: &Path, source| DataError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| e.eq_ignore_ascii_case("png"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(DataError::Format {
            path: dir.display().to_string(),
            message: "a folder with no .png files".into(),
        });
    }
    let mut shape: Option<(ImageShape, &Path)> = None;
    let mut data = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file).map_err(|e| io_err(file, e))?;
        let (pixels, s) = decode(&bytes).map_err(|message| DataError::Format {
            path: file.display().to_string(),
            message,
        })?;
        match shape {
            None => shape = Some((s, file)),
            Some((first, first_file)) if first != s => {
                return Err(DataError::Format {
                    path: file.display().to_string(),
                    message: format!(
                        "an image of {s} where {} is {first}: every image in the folder must \
                         have one size and channel count",
                        first_file.display()
                    ),
                });
            }
            Some(_) => {}
        }
        data.extend(pixels);
    }
    let (shape, _) = shape.expect("at least one file");
    let array = Array2::new(files.len(), shape.len(), data)?;
    Ok((array, shape))
}

/// One PNG's pixels, channel-first, as 0..255 values, and its shape.
fn decode(bytes: &[u8]) -> Result<(Vec<f32>, ImageShape), String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("not a readable PNG file: {e}"))?;
    let size = reader
        .output_buffer_size()
        .ok_or("a PNG image too large to decode")?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("not a readable PNG file: {e}"))?;
    let (width, height) = (info.width as usize, info.height as usize);
    let (samples, channels) = match info.color_type {
        png::ColorType::Grayscale => (1, 1),
        png::ColorType::GrayscaleAlpha => (2, 1),
        png::ColorType::Rgb => (3, 3),
        png::ColorType::Rgba => (4, 3),
        png::ColorType::Indexed => return Err("a palette image that was not expanded".into()),
    };
    let shape = ImageShape {
        channels,
        height,
        width,
    };
    let mut out = vec![0.0f32; shape.len()];
    for y in 0..height {
        let line = &buf[y * info.line_size..];
        for x in 0..width {
            for c in 0..channels {
                out[(c * height + y) * width + x] = line[x * samples + c] as f32;
            }
        }
    }
    Ok((out, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, width: u32, height: u32, color: png::ColorType, data: &[u8]) {
        let file = std::fs::File::create(path).unwrap();
        let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
        encoder.set_color(color);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(data).unwrap();
    }

    /// Grey and RGB(A) files become channel-first rows in file-name order; a folder of mixed
    /// sizes, a broken file and an empty folder are refused with the file named.
    #[test]
    fn png_folders_become_image_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let grey = tmp.path().join("grey");
        std::fs::create_dir(&grey).unwrap();
        write_png(
            &grey.join("b.png"),
            3,
            2,
            png::ColorType::Grayscale,
            &[9, 8, 7, 6, 5, 4],
        );
        write_png(
            &grey.join("a.png"),
            3,
            2,
            png::ColorType::Grayscale,
            &[0, 1, 2, 3, 4, 255],
        );
        std::fs::write(grey.join("notes.txt"), "not an image").unwrap();
        let (rows, shape) = read_folder(&grey).unwrap();
        assert_eq!((shape.channels, shape.height, shape.width), (1, 2, 3));
        assert_eq!(
            rows.data,
            vec![0., 1., 2., 3., 4., 255., 9., 8., 7., 6., 5., 4.]
        );

        let colour = tmp.path().join("colour");
        std::fs::create_dir(&colour).unwrap();
        // 2 x 1 RGBA: (10, 20, 30, a), (40, 50, 60, a)
        write_png(
            &colour.join("x.png"),
            2,
            1,
            png::ColorType::Rgba,
            &[10, 20, 30, 1, 40, 50, 60, 2],
        );
        let (rows, shape) = read_folder(&colour).unwrap();
        assert_eq!((shape.channels, shape.height, shape.width), (3, 1, 2));
        assert_eq!(rows.data, vec![10., 40., 20., 50., 30., 60.]);

        write_png(
            &grey.join("c.png"),
            2,
            2,
            png::ColorType::Grayscale,
            &[0; 4],
        );
        let err = read_folder(&grey).unwrap_err().to_string();
        assert!(
            err.contains("c.png") && err.contains("1x2x2") && err.contains("1x2x3"),
            "{err}"
        );
        std::fs::remove_file(grey.join("c.png")).unwrap();
        std::fs::write(grey.join("d.png"), "PNG? no").unwrap();
        let err = read_folder(&grey).unwrap_err().to_string();
        assert!(
            err.contains("d.png") && err.contains("not a readable PNG"),
            "{err}"
        );
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(
            read_folder(&empty)
                .unwrap_err()
                .to_string()
                .contains("no .png files")
        );
    }
}
