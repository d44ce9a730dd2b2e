"""Fake identities: countries, people, sites and their staff, generated at run time.

Names are built from per-country given names and family-name stems and endings, so that every
name part has at least four letters and looks like a name of the site's country. A name part is
rejected when it occurs inside any DICOM keyword or attribute name, UID name, de-identification
vocabulary or the generator's own non-PHI text (so a PHI token never collides with non-PHI content
by chance).
"""

from __future__ import annotations

import datetime as _dt
import random
import unicodedata
from dataclasses import dataclass, field
from functools import cache

__all__ = [
    "COUNTRIES",
    "Country",
    "Person",
    "Site",
    "ascii_fold",
    "forbidden_corpus",
    "make_site",
]

_FOLD = str.maketrans({"Đ": "Dj", "đ": "dj", "ß": "ss", "Ø": "O", "ø": "o", "Ł": "L", "ł": "l"})


def ascii_fold(text: str) -> str:
    """Strip diacritics the way scanners and PACS exports do (``Đorđević`` -> ``Djordjevic``)."""
    text = text.translate(_FOLD)
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


#: Extra non-PHI vocabulary a de-identified set may contain (PS3.15 option names and the like).
_EXTRA_VOCABULARY = (
    "basic application confidentiality profile clean pixel data option clean recognizable visual "
    "features option clean graphics option clean structured content option clean descriptors "
    "option retain longitudinal temporal information with full dates option modified dates "
    "retain patient characteristics option retain device identity option retain institution "
    "identity option retain uids option retain safe private option deidentification method "
    "de-identified pseudonymized anonymized removed incisive lab synthetic generator key image "
    "thorax chest abdomen pelvis prostate breast mammography screening staging follow-up "
    "localizer topogram scout contrast portal venous routine lung mediastinum soft tissue "
    "diffusion apparent coefficient axial coronal sagittal oblique cranio caudal medio lateral "
    "general hospital university clinic department radiology imaging diagnostic oncology "
    "workstation station operator physician technologist referring reading"
)


@cache
def forbidden_corpus() -> str:
    """Lower-case text in which no name part may occur (DICOM dictionaries and vocabulary)."""
    from pydicom.datadict import DicomDictionary, RepeatersDictionary
    from pydicom.uid import UID_dictionary

    parts: list[str] = [_EXTRA_VOCABULARY]
    for entry in list(DicomDictionary.values()) + list(RepeatersDictionary.values()):
        parts.append(entry[2])  # name
        parts.append(entry[4])  # keyword
    for entry in UID_dictionary.values():
        parts.append(entry[0])
    return " ".join(parts).lower()


def _acceptable(name: str) -> bool:
    folded = ascii_fold(name).lower()
    return len(folded) >= 4 and folded.isalpha() and folded not in forbidden_corpus()


@dataclass(frozen=True)
class Country:
    """What makes identities look like one country's."""

    code: str
    name: str
    phone_cc: str
    mobile_prefixes: tuple[str, ...]
    landline_prefixes: tuple[str, ...]
    charset: str | None
    male: tuple[str, ...]
    female: tuple[str, ...]
    stems: tuple[str, ...]
    endings_m: tuple[str, ...]
    endings_f: tuple[str, ...]
    city_a: tuple[str, ...]
    city_b: tuple[str, ...]
    street_fmt: str
    hospital_fmt: str
    department_fmt: str
    national_issuer: str
    two_surnames: bool = False

    def family_names(self, female: bool) -> list[str]:
        """Every generated family name of this country, filtered (deterministic order)."""
        return list(_family_names(self, female))

    def given_names(self, female: bool) -> list[str]:
        """Given names of this country, filtered."""
        return list(_given_names(self, female))


@cache
def _family_names(country: Country, female: bool) -> tuple[str, ...]:
    endings = country.endings_f if female else country.endings_m
    names = {stem + end for stem in country.stems for end in endings}
    return tuple(sorted(n for n in names if _acceptable(n)))


@cache
def _given_names(country: Country, female: bool) -> tuple[str, ...]:
    return tuple(n for n in (country.female if female else country.male) if _acceptable(n))


COUNTRIES: tuple[Country, ...] = (
    Country(
        "GR", "Greece", "+30", ("694", "697", "698", "699"), ("2410", "2310", "2610", "2810"), None,
        ("Georgios", "Dimitrios", "Konstantinos", "Ioannis", "Nikolaos", "Panagiotis",
         "Vasileios", "Christos", "Athanasios", "Michail", "Evangelos", "Spyridon", "Theodoros",
         "Stavros", "Emmanouil", "Charalampos", "Apostolos"),
        ("Maria", "Eleni", "Aikaterini", "Vasiliki", "Sofia", "Angeliki", "Georgia", "Dimitra",
         "Konstantina", "Paraskevi", "Anastasia", "Christina", "Eirini", "Panagiota",
         "Theodora", "Evangelia", "Despoina"),
        ("Papad", "Konstantin", "Nikol", "Vasil", "Ioann", "Christ", "Alexandr", "Stavr",
         "Theodor", "Karaman", "Zerv", "Kourt", "Makr", "Lambr", "Spyr", "Anagnost", "Michail",
         "Pantel", "Kalog", "Triant", "Athanas", "Chatzi", "Tsoumpr", "Vlach"),
        ("opoulos", "akis", "idis"),
        ("opoulou", "aki", "idou"),
        ("Kala", "Mavro", "Argyro", "Palio", "Lefko", "Petro", "Kastro", "Thermo"),
        ("polis", "chori", "kampos", "vouni", "limni"),
        "Odos {name} {num}, {zip} {city}, Greece",
        "Geniko Nosokomeio {city}",
        "Tmima Apeikoniseon {city}",
        "GR-AMKA",
    ),
    Country(
        "IT", "Italy", "+39", ("320", "333", "347", "389"), ("051", "055", "071", "081"),
        "ISO_IR 100",
        ("Giuseppe", "Giovanni", "Antonio", "Mario", "Luigi", "Francesco", "Angelo", "Vincenzo",
         "Pietro", "Salvatore", "Carlo", "Domenico", "Bruno", "Paolo", "Raffaele", "Gianluca",
         "Massimo"),
        ("Maria", "Anna", "Giuseppina", "Rosa", "Giovanna", "Teresa", "Lucia", "Carmela",
         "Caterina", "Francesca", "Antonietta", "Elena", "Concetta", "Patrizia", "Raffaella",
         "Graziella", "Loredana"),
        ("Ross", "Russ", "Ferr", "Bianch", "Marin", "Grec", "Brun", "Gall", "Mancin", "Giordan",
         "Rizz", "Lombard", "Morett", "Barbier", "Fontan", "Santor", "Carus", "Marches",
         "Pellegr", "Valent", "Serafin", "Benedett", "Orland", "Piccol"),
        ("i", "o", "ini", "etti", "elli", "ucci"),
        ("i", "o", "ini", "etti", "elli", "ucci"),
        ("Monte", "Castel", "Villa", "Borgo", "Pieve", "Rocca", "Poggio", "Colle"),
        ("alto", "verde", "nuovo", "fiore", "bello", "rosso"),
        "Via {name} {num}, {zip} {city}, Italia",
        "Ospedale Civile di {city}",
        "Radiologia Diagnostica {city}",
        "IT-CF",
    ),
    Country(
        "RS", "Serbia", "+381", ("60", "63", "64", "65"), ("11", "21", "18", "34"), "ISO_IR 192",
        ("Dragan", "Zoran", "Milan", "Nenad", "Goran", "Dejan", "Miroslav", "Aleksandar",
         "Vladimir", "Slobodan", "Marko", "Nikola", "Stefan", "Miloš", "Dušan", "Branislav",
         "Predrag"),
        ("Jelena", "Milica", "Marija", "Snežana", "Gordana", "Dragana", "Ljiljana", "Vesna",
         "Mirjana", "Tatjana", "Biljana", "Svetlana", "Danijela", "Ivana", "Nataša", "Jovana",
         "Slavica"),
        ("Jovan", "Petr", "Nikol", "Mark", "Đorđ", "Stojan", "Stefan", "Ilij", "Pavl", "Tomaš",
         "Radov", "Lazar", "Vuk", "Živk", "Kost", "Bogdan", "Milosavlj", "Popov", "Simon",
         "Todor", "Mitr", "Stank", "Obrad", "Vasilj"),
        ("ović", "ević", "ić"),
        ("ović", "ević", "ić"),
        ("Novi", "Gornji", "Donji", "Stari", "Veliki", "Mali"),
        ("grad", "vac", "selo", "polje", "brdo"),
        "Ulica {name} {num}, {zip} {city}, Srbija",
        "Opšta bolnica {city}",
        "Služba radiologije {city}",
        "RS-JMBG",
    ),
    Country(
        "CY", "Cyprus", "+357", ("96", "97", "99"), ("22", "24", "25", "26"), None,
        ("Andreas", "Georgios", "Christos", "Michalis", "Panayiotis", "Savvas", "Charalambos",
         "Marios", "Demetris", "Loizos", "Kyriacos", "Stelios", "Antonis", "Costas", "Nicolas",
         "Pavlos", "Sotiris"),
        ("Maria", "Eleni", "Androulla", "Georgia", "Christina", "Despina", "Panayiota", "Anna",
         "Kyriaki", "Elena", "Ioanna", "Chrystalla", "Antonia", "Stavroulla", "Niki", "Myrto",
         "Katerina"),
        ("Georgi", "Christodoul", "Charalamb", "Ioann", "Constantin", "Demetri", "Kyriak",
         "Panayiot", "Savv", "Loiz", "Hadjipavl", "Michael", "Antoni", "Stylian", "Neophyt",
         "Evangel", "Hadjicost", "Theodos", "Pericle", "Andre"),
        ("ou", "ides"),
        ("ou", "idou"),
        ("Agia", "Kato", "Pano", "Agios", "Neo"),
        ("dromos", "chori", "kampia", "vouni", "lithos"),
        "Odos {name} {num}, {zip} {city}, Cyprus",
        "Geniko Nosokomeio {city}",
        "Aktinologiko Tmima {city}",
        "CY-ID",
    ),
    Country(
        "ES", "Spain", "+34", ("600", "616", "650", "677"), ("91", "93", "96", "95"),
        "ISO_IR 100",
        ("Antonio", "Manuel", "Francisco", "David", "Javier", "Daniel", "Carlos", "Jesús",
         "Alejandro", "Miguel", "Rafael", "Pedro", "Pablo", "Fernando", "Sergio", "Andrés",
         "Ramón"),
        ("María", "Carmen", "Josefa", "Isabel", "Dolores", "Pilar", "Teresa", "Lucía",
         "Rosario", "Cristina", "Francisca", "Laura", "Antonia", "Marta", "Elena", "Mercedes",
         "Inmaculada"),
        ("Fernánd", "Gonzál", "Rodrígu", "Martín", "Sánch", "Pér", "Jimén", "Hernánd", "Domíngu",
         "Vázqu", "Ramír", "Gutiérr", "Álvar", "Benít", "Suár", "Ménd", "Ibáñ", "Nuñ", "Velázqu",
         "Márqu", "Lóp", "Ordóñ"),
        ("ez",),
        ("ez",),
        ("Villa", "Torre", "Puebla", "Fuente", "Castillo", "Valle"),
        ("rreal", "nueva", "alta", "blanca", "seca"),
        "Calle {name} {num}, {zip} {city}, España",
        "Hospital General de {city}",
        "Servicio de Radiodiagnóstico {city}",
        "ES-DNI",
        two_surnames=True,
    ),
)


@dataclass(frozen=True)
class Person:
    """A fake person: family and given name, optional title (``Dr.``)."""

    family: str
    given: str
    prefix: str = ""

    @property
    def pn(self) -> str:
        """DICOM PN form (``Family^Given`` or ``Family^Given^^Dr.``)."""
        return f"{self.family}^{self.given}" + (f"^^{self.prefix}" if self.prefix else "")

    @property
    def natural(self) -> str:
        """Natural order (``Given Family``)."""
        return f"{self.given} {self.family}"

    @property
    def burned(self) -> str:
        """How a modality prints the name into pixels (``FAMILY, GIVEN``, ASCII)."""
        return ascii_fold(f"{self.family}, {self.given}").upper()

    def tokens(self) -> list[str]:
        """Every identifying string of this person: PN, natural form, parts, ASCII variants."""
        out = [self.pn, f"{self.family}^{self.given}", self.natural,
               f"{self.family}, {self.given}", self.family, self.given]
        out += [p for p in self.family.split() if len(p) >= 4]
        out += [ascii_fold(t) for t in out]
        return _unique(out)


def _unique(items: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        if item and len(item) >= 4:
            seen.setdefault(item, None)
    return list(seen)


def make_person(rng: random.Random, country: Country, *, female: bool, prefix: str = "") -> Person:
    """A random person of `country`."""
    given = rng.choice(country.given_names(female))
    families = country.family_names(female)
    family = rng.choice(families)
    if country.two_surnames:
        second = rng.choice([f for f in families if f != family])
        family = f"{family} {second}"
    return Person(family, given, prefix)


@dataclass(frozen=True)
class Device:
    """One modality device of a site."""

    modality: str
    manufacturer: str
    model: str
    software: str
    serial: str
    station: str


@dataclass
class Site:
    """A fake data provider: its institution, staff, devices and conventions."""

    name: str
    index: int
    country: Country
    city: str
    institution: str
    department: str
    address: str
    phone: str
    ae_title: str
    code3: str
    vendor: str  # "GE" or "SIEMENS" (CT and MG); MR vendor may differ
    mr_vendor: str
    mrn_issuer: str
    radiologists: list[Person]
    technologists: list[Person]
    referrers: list[Person]
    devices: dict[str, Device] = field(default_factory=dict)

    @property
    def charset(self) -> str | None:
        """DICOM Specific Character Set of this site's files (``None``: default repertoire)."""
        return self.country.charset

    def tokens(self) -> list[str]:
        """Every identifying string of the site and its staff."""
        out = [self.institution, self.department, self.address, self.phone, self.ae_title,
               self.mrn_issuer, self.city]
        out += [d.station for d in self.devices.values()]
        out += [d.serial for d in self.devices.values()]
        for person in self.radiologists + self.technologists + self.referrers:
            out += person.tokens()
        out += [ascii_fold(t) for t in out]
        return _unique(out)


_VENDOR_DEVICES = {
    "GE": {
        "CT": ("GE MEDICAL SYSTEMS", "Revolution EVO", "gmp_vct.43"),
        "MR": ("GE MEDICAL SYSTEMS", "SIGNA Architect", "27\\LX\\MR Software release:MR29.1"),
        "MG": ("GE MEDICAL SYSTEMS", "Senographe Pristina", "ADS_59.20"),
        "OT": ("GE MEDICAL SYSTEMS", "Advantage Workstation", "AW4.7_07"),
    },
    "SIEMENS": {
        "CT": ("SIEMENS", "SOMATOM Definition AS+", "syngo CT VA48A"),
        "MR": ("SIEMENS", "MAGNETOM Vida", "syngo MR XA20"),
        "MG": ("SIEMENS", "MAMMOMAT Revelation", "VB10A"),
        "OT": ("SIEMENS", "syngo.via", "VB60A"),
    },
}


def _phone(rng: random.Random, country: Country, mobile: bool) -> str:
    if mobile:
        prefix = rng.choice(country.mobile_prefixes)
        rest = f"{rng.randrange(10**7):07d}"
        return f"{country.phone_cc} {prefix} {rest[:3]} {rest[3:]}"
    prefix = rng.choice(country.landline_prefixes)
    rest = f"{rng.randrange(10**6):06d}"
    return f"{country.phone_cc} {prefix} {rest}"


def make_address(rng: random.Random, country: Country, city: str) -> str:
    """A postal address in `city` (a street named after a fake person)."""
    street = rng.choice(country.family_names(False))
    return country.street_fmt.format(name=street, num=rng.randrange(1, 180),
                                     zip=f"{rng.randrange(10000, 99999)}", city=city)


def make_site(seed: int, name: str, index: int) -> Site:
    """The site called `name` (its index picks the country, cycling Greece, Italy, Serbia,
    Cyprus, Spain)."""
    from incisive_lab.dicom.synth._random import py_rng

    rng = py_rng(seed, "site", name, index)
    country = COUNTRIES[index % len(COUNTRIES)]
    while True:
        city = rng.choice(country.city_a) + rng.choice(country.city_b)
        city = city[0] + city[1:].lower() if " " not in city else city
        if _acceptable(city):
            break
    code3 = "".join(ch for ch in ascii_fold(city).upper() if ch.isalpha())
    code3 = (code3[0] + "".join(c for c in code3[1:] if c not in "AEIOU") + "XXX")[:3]
    vendor = "GE" if index % 2 == 0 else "SIEMENS"
    mr_vendor = "SIEMENS" if index % 3 == 2 else vendor
    radiologists = [make_person(rng, country, female=rng.random() < 0.5, prefix="Dr.")
                    for _ in range(3)]
    technologists = [make_person(rng, country, female=rng.random() < 0.6) for _ in range(4)]
    referrers = [make_person(rng, country, female=rng.random() < 0.5, prefix="Dr.")
                 for _ in range(4)]
    site = Site(
        name=name,
        index=index,
        country=country,
        city=city,
        institution=country.hospital_fmt.format(city=city),
        department=country.department_fmt.format(city=city),
        address=make_address(rng, country, city),
        phone=_phone(rng, country, mobile=False),
        ae_title=f"{code3}PACS{index + 1}",
        code3=code3,
        vendor=vendor,
        mr_vendor=mr_vendor,
        mrn_issuer=f"{code3}-MRN-{index + 1}",
        radiologists=radiologists,
        technologists=technologists,
        referrers=referrers,
    )
    for modality in ("CT", "MR", "MG", "OT"):
        v = mr_vendor if modality == "MR" else vendor
        manufacturer, model, software = _VENDOR_DEVICES[v][modality]
        serial = f"{modality}{rng.randrange(10000, 99999)}{rng.choice('ABCDEFGHKLMNPRSTXZ')}"
        station = f"{code3}{'WS' if modality == 'OT' else modality}{rng.randrange(1, 9):02d}"
        site.devices[modality] = Device(modality, manufacturer, model, software, serial, station)
    return site


def make_birth_date(rng: random.Random, anchor: _dt.date, age_min: int, age_max: int) -> _dt.date:
    """A birth date giving an age in [age_min, age_max] at `anchor`."""
    days = rng.randrange(age_min * 365 + 30, age_max * 365 - 30)
    return anchor - _dt.timedelta(days=days)


def make_phone(rng: random.Random, country: Country, *, mobile: bool = True) -> str:
    """A phone number of `country` (mobile by default)."""
    return _phone(rng, country, mobile)


def make_national_id(rng: random.Random, country: Country, person: Person, birth: _dt.date,
                     female: bool) -> str:
    """A national identifier in the country's format (not a real one: random digits)."""
    if country.code == "GR":  # AMKA: DDMMYY + 5 digits
        return birth.strftime("%d%m%y") + f"{rng.randrange(10**5):05d}"
    if country.code == "IT":  # codice fiscale shape
        fam = "".join(c for c in ascii_fold(person.family).upper() if c.isalpha() and c not in "AEIOU")
        giv = "".join(c for c in ascii_fold(person.given).upper() if c.isalpha() and c not in "AEIOU")
        month = "ABCDEHLMPRST"[birth.month - 1]
        day = birth.day + (40 if female else 0)
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        return (f"{(fam + 'XXX')[:3]}{(giv + 'XXX')[:3]}{birth:%y}{month}{day:02d}"
                f"{rng.choice('ABCDEFGHILM')}{rng.randrange(100, 999)}{rng.choice(letters)}")
    if country.code == "RS":  # JMBG shape: DDMMYYY RR BBB K
        return (birth.strftime("%d%m") + f"{birth.year % 1000:03d}" + f"{rng.randrange(70, 99)}"
                + f"{rng.randrange(500 if female else 0, 1000 if female else 500):03d}"
                + str(rng.randrange(10)))
    if country.code == "ES":  # DNI: 8 digits + control letter
        number = rng.randrange(10**7, 10**8)
        return f"{number}{'TRWAGMYFPDXBNJZSQVHLCKE'[number % 23]}"
    return f"{rng.randrange(10**9, 10**10)}"  # CY: ten digits
