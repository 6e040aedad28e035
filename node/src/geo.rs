//! Geography: the built-in table of real cities, great-circle distances, and the `LAT,LON` or
//! city-name locations users type.
//!
//! The simulator places its peers at these cities (its latency model is calibrated on them);
//! the real node names the region of a location a peer declared (`--location`) after the
//! nearest of them, which `beam network peers --geo` and the dashboard's map show. Nothing here
//! is measured: a declared location is what the peer says.
//!
//!
//! Each of the six regions a scenario can populate (`[regions]` in the scenario file) has a
//! list of major cities with their coordinates. The cities are the places where the Internet's
//! big exchange points and cloud regions are, so that a peer "in Frankfurt" is as close to the
//! backbone as a peer there would be. The table is data, not configuration: changing it changes
//! every simulated latency, so it lives in the source and is covered by the calibration test in
//! the simulator's latency model (`sim/src/latency.rs`).
//!
//! Coordinates are city centres in decimal degrees (north and east positive), except where a
//! cloud region sits outside the centre (Ashburn for AWS N. Virginia).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A continent-sized region; scenario files give each one a share of the peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    /// Canada, the United States and Mexico.
    NorthAmerica,
    /// Europe.
    Europe,
    /// Asia, including the Middle East.
    Asia,
    /// South America.
    SouthAmerica,
    /// Africa.
    Africa,
    /// Australia and New Zealand.
    Oceania,
}

impl Region {
    /// Every region, in the order of the scenario file's `[regions]` section.
    pub const ALL: [Region; 6] = [
        Region::NorthAmerica,
        Region::Europe,
        Region::Asia,
        Region::SouthAmerica,
        Region::Africa,
        Region::Oceania,
    ];

    /// The region's name for people, e.g. `North America`.
    pub fn name(self) -> &'static str {
        match self {
            Region::NorthAmerica => "North America",
            Region::Europe => "Europe",
            Region::Asia => "Asia",
            Region::SouthAmerica => "South America",
            Region::Africa => "Africa",
            Region::Oceania => "Oceania",
        }
    }

    /// The region's key in a scenario file, e.g. `north_america`.
    pub fn key(self) -> &'static str {
        match self {
            Region::NorthAmerica => "north_america",
            Region::Europe => "europe",
            Region::Asia => "asia",
            Region::SouthAmerica => "south_america",
            Region::Africa => "africa",
            Region::Oceania => "oceania",
        }
    }

    /// The cities of this region in the built-in table.
    pub fn cities(self) -> &'static [City] {
        match self {
            Region::NorthAmerica => NORTH_AMERICA,
            Region::Europe => EUROPE,
            Region::Asia => ASIA,
            Region::SouthAmerica => SOUTH_AMERICA,
            Region::Africa => AFRICA,
            Region::Oceania => OCEANIA,
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// A city of the built-in table: its name and coordinates in decimal degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct City {
    /// The city's usual English name.
    pub name: &'static str,
    /// Latitude, degrees north (negative is south).
    pub lat: f64,
    /// Longitude, degrees east (negative is west).
    pub lon: f64,
}

const fn city(name: &'static str, lat: f64, lon: f64) -> City {
    City { name, lat, lon }
}

/// North America; Ashburn is AWS us-east-1 (N. Virginia).
const NORTH_AMERICA: &[City] = &[
    city("Ashburn", 39.0438, -77.4874),
    city("New York", 40.7128, -74.0060),
    city("Chicago", 41.8781, -87.6298),
    city("Dallas", 32.7767, -96.7970),
    city("Atlanta", 33.7490, -84.3880),
    city("Miami", 25.7617, -80.1918),
    city("Denver", 39.7392, -104.9903),
    city("Los Angeles", 34.0522, -118.2437),
    city("San Jose", 37.3382, -121.8863),
    city("Seattle", 47.6062, -122.3321),
    city("Toronto", 43.6532, -79.3832),
    city("Montreal", 45.5017, -73.5673),
    city("Mexico City", 19.4326, -99.1332),
];

/// Europe; Dublin is AWS eu-west-1 (Ireland), Frankfurt is eu-central-1.
const EUROPE: &[City] = &[
    city("Dublin", 53.3498, -6.2603),
    city("London", 51.5074, -0.1278),
    city("Amsterdam", 52.3676, 4.9041),
    city("Frankfurt", 50.1109, 8.6821),
    city("Paris", 48.8566, 2.3522),
    city("Madrid", 40.4168, -3.7038),
    city("Milan", 45.4642, 9.1900),
    city("Zurich", 47.3769, 8.5417),
    city("Stockholm", 59.3293, 18.0686),
    city("Warsaw", 52.2297, 21.0122),
];

/// Asia and the Middle East; Tokyo is AWS ap-northeast-1.
const ASIA: &[City] = &[
    city("Tokyo", 35.6762, 139.6503),
    city("Osaka", 34.6937, 135.5023),
    city("Seoul", 37.5665, 126.9780),
    city("Hong Kong", 22.3193, 114.1694),
    city("Taipei", 25.0330, 121.5654),
    city("Singapore", 1.3521, 103.8198),
    city("Jakarta", -6.2088, 106.8456),
    city("Mumbai", 19.0760, 72.8777),
    city("Bangalore", 12.9716, 77.5946),
    city("Dubai", 25.2048, 55.2708),
];

/// South America.
const SOUTH_AMERICA: &[City] = &[
    city("Sao Paulo", -23.5505, -46.6333),
    city("Rio de Janeiro", -22.9068, -43.1729),
    city("Buenos Aires", -34.6037, -58.3816),
    city("Santiago", -33.4489, -70.6693),
    city("Lima", -12.0464, -77.0428),
    city("Bogota", 4.7110, -74.0721),
    city("Fortaleza", -3.7319, -38.5267),
    city("Quito", -0.1807, -78.4678),
];

/// Africa.
const AFRICA: &[City] = &[
    city("Johannesburg", -26.2041, 28.0473),
    city("Cape Town", -33.9249, 18.4241),
    city("Lagos", 6.5244, 3.3792),
    city("Nairobi", -1.2921, 36.8219),
    city("Cairo", 30.0444, 31.2357),
    city("Casablanca", 33.5731, -7.5898),
    city("Accra", 5.6037, -0.1870),
    city("Dakar", 14.7167, -17.4677),
];

/// Oceania; Sydney is AWS ap-southeast-2.
const OCEANIA: &[City] = &[
    city("Sydney", -33.8688, 151.2093),
    city("Melbourne", -37.8136, 144.9631),
    city("Brisbane", -27.4698, 153.0251),
    city("Perth", -31.9505, 115.8605),
    city("Adelaide", -34.9285, 138.6007),
    city("Auckland", -36.8485, 174.7633),
    city("Wellington", -41.2865, 174.7762),
];

/// Finds a city of the table by name (ASCII case-insensitive), with its region.
pub fn find_city(name: &str) -> Option<(Region, &'static City)> {
    let name = name.trim();
    Region::ALL.iter().find_map(|&region| {
        region
            .cities()
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
            .map(|c| (region, c))
    })
}

/// Mean radius of the Earth in km, as used by the haversine formula.
pub const EARTH_RADIUS_KM: f64 = 6371.0;

/// Great-circle distance in km between two points given in degrees (haversine).
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// Why a location could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LocationError {
    /// The text is neither `LAT,LON` nor a city of the built-in table.
    #[error(
        "expected LAT,LON in decimal degrees (e.g. 53.35,-6.26) or a city of the built-in table \
         (e.g. Dublin), got {0:?}"
    )]
    Format(String),
    /// One coordinate is not a number.
    #[error("{which} {text:?} is not a number (expected decimal degrees, e.g. 53.35,-6.26)")]
    NotANumber {
        /// `latitude` or `longitude`.
        which: &'static str,
        /// The text given.
        text: String,
    },
    /// The latitude is outside −90..=90.
    #[error("latitude {0} is out of range: must be between -90 and 90 (LAT comes first)")]
    Latitude(f64),
    /// The longitude is outside −180..=180.
    #[error("longitude {0} is out of range: must be between -180 and 180")]
    Longitude(f64),
}

/// Parses `"LAT,LON"` in decimal degrees (spaces allowed), range-checked.
pub fn parse_lat_lon(text: &str) -> Result<(f64, f64), LocationError> {
    let Some((lat, lon)) = text.split_once(',') else {
        return Err(LocationError::Format(text.to_owned()));
    };
    let number = |which: &'static str, s: &str| {
        let s = s.trim();
        s.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| LocationError::NotANumber {
                which,
                text: s.to_owned(),
            })
    };
    let lat = number("latitude", lat)?;
    let lon = number("longitude", lon)?;
    if !(-90.0..=90.0).contains(&lat) {
        return Err(LocationError::Latitude(lat));
    }
    if !(-180.0..=180.0).contains(&lon) {
        return Err(LocationError::Longitude(lon));
    }
    Ok((lat, lon))
}

/// Parses `"LAT,LON"`, or a city name of the built-in table (e.g. `Dublin`).
pub fn parse_location(text: &str) -> Result<(f64, f64), LocationError> {
    if text.contains(',') {
        return parse_lat_lon(text);
    }
    find_city(text)
        .map(|(_, c)| (c.lat, c.lon))
        .ok_or_else(|| LocationError::Format(text.to_owned()))
}

/// The city of the table nearest to a point, with its region and the distance in km.
pub fn nearest_city(lat: f64, lon: f64) -> (Region, &'static City, f64) {
    let mut best = (Region::Europe, &EUROPE[0], f64::INFINITY);
    for region in Region::ALL {
        for c in region.cities() {
            let d = haversine_km(lat, lon, c.lat, c.lon);
            if d < best.2 {
                best = (region, c, d);
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_region_has_at_least_six_valid_cities() {
        for region in Region::ALL {
            let cities = region.cities();
            assert!(cities.len() >= 6, "{region} has {} cities", cities.len());
            for c in cities {
                assert!((-90.0..=90.0).contains(&c.lat), "{}", c.name);
                assert!((-180.0..=180.0).contains(&c.lon), "{}", c.name);
            }
        }
    }

    #[test]
    fn city_names_are_unique_and_findable() {
        let mut names: Vec<&str> = Region::ALL
            .iter()
            .flat_map(|r| r.cities().iter().map(|c| c.name))
            .collect();
        let total = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), total);
        for name in ["Ashburn", "dublin", "FRANKFURT", "Tokyo", "Sydney"] {
            assert!(find_city(name).is_some(), "{name}");
        }
        assert_eq!(find_city("Atlantis"), None);
    }

    #[test]
    fn the_nearest_city_names_the_region() {
        let (region, city, km) = nearest_city(52.52, 13.40); // Berlin
        assert_eq!(region, Region::Europe);
        assert!(km < 700.0, "{} at {km} km", city.name);
        let (region, city, km) = nearest_city(-33.87, 151.21);
        assert_eq!((region, city.name), (Region::Oceania, "Sydney"));
        assert!(km < 5.0);
        assert_eq!(nearest_city(40.71, -74.0).0, Region::NorthAmerica);
    }
}
