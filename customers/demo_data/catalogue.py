"""The demo shop's catalogue and the parameters of its customers' behaviour.

Plain data, so a reader can see (and a marketer can change) what the generator assumes: which add-ons go
with which product and how likely, how often consumables come back, the season of each domain.
"""

HISTORY_MONTHS = 18
CURRENCY = "EUR"
SITE = "https://shop.example"
DAY = 86_400
DOMAINS = ("electronics", "bank", "saas")
DOMAIN_SHARE = (0.55, 0.25, 0.20)
FIRST_ANCHOR_SHARE = 0.92  # the rest signed up (newsletter, app) without buying an anchor
ANCHORS_PER_YEAR = (1.2, 0.9, 0.8)  # after the first, for a customer of average activity
TRIPS_PER_YEAR = (0.8, 0.5, 0.5)  # purchases of add-ons and consumables not prompted by an anchor
SAME_ORDER = (0.6, 0.6, 0.35)  # share of complements bought together with their anchor
KEEP_BUYING = 0.75  # chance a consumable is bought again after each purchase
TRIP_EXTRA_ITEMS = 2.0  # mean items beyond the first in an order not prompted by an anchor
FOLLOW_UP_EXTRA = 0.6  # share of complement orders that also pick up something else
REPEAT_EXTRA = 0.5  # share of repeat orders of a consumable that also pick up something else
CHANNELS = (
    {"web": 0.55, "store": 0.3, "app": 0.15},
    {"branch": 0.35, "app": 0.4, "web": 0.2, "phone": 0.05},
    {"web": 0.9, "app": 0.1},
)
RETURNED = (0.04, 0.0, 0.01)
CANCELLED = (0.01, 0.02, 0.02)  # for the bank: withdrawn in the cooling-off period
MONTH_FACTORS = (
    (0.9, 0.75, 0.8, 0.85, 0.9, 0.9, 0.95, 0.95, 1.0, 1.05, 1.5, 1.9),
    (1.4, 1.1, 1.0, 1.0, 1.0, 0.9, 0.8, 0.8, 1.3, 1.1, 1.0, 0.8),
    (0.9, 1.0, 1.3, 0.9, 1.0, 1.3, 0.8, 0.8, 1.3, 1.0, 1.1, 1.4),
)
WEEKEND_FACTOR = (1.3, 0.4, 0.3)
PEAK_HOURS = ((20, 3.5), (12, 3.0), (11, 2.5))  # (mean, spread) of the hour of day
GROWTH_PER_YEAR = 0.2
CONSENT_SHARE = 0.8
SUPPRESSION = {"unsubscribed": 0.025, "bounced": 0.01, "complained": 0.003}  # among consenting customers

# sku, name, category, price, weight (popularity), days between repeat purchases (consumables only)
CATALOGUE = {
    "electronics": [
        ("EL-LAP-13", 'Ultrabook 13"', "Laptops", 1099, 3, 0),
        ("EL-LAP-15", 'Laptop Pro 15"', "Laptops", 1499, 2, 0),
        ("EL-PHN-A5", "Smartphone A5", "Phones", 699, 4, 0),
        ("EL-PHN-XP", "Smartphone X Pro", "Phones", 1099, 3, 0),
        ("EL-TV-55", '4K TV 55"', "TVs", 799, 2, 0),
        ("EL-TV-65", 'OLED TV 65"', "TVs", 1899, 1, 0),
        ("EL-CAM-M1", "Mirrorless camera M1", "Cameras", 1299, 1, 0),
        ("EL-CON-G1", "Game console G1", "Gaming", 499, 2, 0),
        ("EL-PRN-I1", "Inkjet printer I1", "Printers", 129, 2, 0),
        ("EL-COF-E1", "Espresso machine E1", "Small appliances", 349, 2, 0),
        ("EL-TAB-11", 'Tablet 11"', "Tablets", 599, 2, 0),
        ("EL-ACC-BAG", "Laptop backpack", "Laptop accessories", 59, 2, 0),
        ("EL-ACC-MSE", "Wireless mouse", "Laptop accessories", 39, 3, 0),
        ("EL-ACC-HUB", "USB-C hub", "Laptop accessories", 49, 2, 0),
        ("EL-ACC-SLV", "Laptop sleeve", "Laptop accessories", 29, 1, 0),
        ("EL-ACC-CASE", "Phone case", "Phone accessories", 25, 3, 0),
        ("EL-ACC-SCR", "Screen protector", "Phone accessories", 15, 3, 0),
        ("EL-ACC-CHG", "Fast charger 65 W", "Phone accessories", 35, 2, 0),
        ("EL-ACC-BUDS", "Wireless earbuds", "Audio", 149, 2, 0),
        ("EL-ACC-MNT", "TV wall mount", "TV accessories", 69, 1, 0),
        ("EL-ACC-SBR", "Soundbar", "Audio", 299, 1, 0),
        ("EL-ACC-HDMI", "HDMI 2.1 cable", "TV accessories", 19, 2, 0),
        ("EL-ACC-STR", "Streaming stick", "TV accessories", 49, 1, 0),
        ("EL-ACC-LNS", "50 mm prime lens", "Camera accessories", 249, 1, 0),
        ("EL-ACC-TRI", "Travel tripod", "Camera accessories", 79, 1, 0),
        ("EL-ACC-CBAG", "Camera bag", "Camera accessories", 69, 1, 0),
        ("EL-ACC-CTRL", "Wireless controller", "Gaming", 69, 2, 0),
        ("EL-ACC-PEN", "Tablet stylus", "Tablet accessories", 99, 1, 0),
        ("EL-ACC-KBD", "Tablet keyboard cover", "Tablet accessories", 149, 1, 0),
        ("EL-SUB-GAME", "Online gaming, 12 months", "Gaming", 59, 1, 365),
        ("EL-CNS-SD", "Memory card 128 GB", "Consumables", 29, 2, 120),
        ("EL-CNS-INKB", "Ink cartridge, black", "Consumables", 24, 2, 60),
        ("EL-CNS-INKC", "Ink cartridge, colour", "Consumables", 29, 1, 90),
        ("EL-CNS-PAPER", "Photo paper, 100 sheets", "Consumables", 12, 1, 120),
        ("EL-CNS-BEAN", "Espresso beans 1 kg", "Consumables", 18, 2, 30),
        ("EL-CNS-DESC", "Descaler", "Consumables", 9, 1, 90),
        ("EL-CNS-BAT", "AA batteries, 8 pack", "Consumables", 8, 2, 75),
        ("EL-CNS-CLN", "Screen cleaning kit", "Consumables", 12, 1, 180),
    ],
    "bank": [
        ("BK-ACC-CUR", "Everyday current account", "Accounts", 4.9, 5, 0),
        ("BK-ACC-PREM", "Premium current account", "Accounts", 14.9, 2, 0),
        ("BK-ACC-BUS", "Business account", "Accounts", 19.9, 1, 0),
        ("BK-LOAN-MORT", "Mortgage", "Loans", 995, 1, 0),
        ("BK-LOAN-CAR", "Car loan", "Loans", 150, 2, 0),
        ("BK-LOAN-PERS", "Personal loan", "Loans", 99, 2, 0),
        ("BK-CARD-DEB", "Debit card", "Cards", 10, 2, 0),
        ("BK-CARD-CRED", "Credit card", "Cards", 29, 3, 0),
        ("BK-CARD-GOLD", "Gold travel credit card", "Cards", 120, 1, 0),
        ("BK-ACC-SAV", "Savings account", "Accounts", 0, 3, 0),
        ("BK-OVD", "Arranged overdraft", "Loans", 25, 1, 0),
        ("BK-INS-HOME", "Home insurance", "Insurance", 240, 2, 0),
        ("BK-INS-LIFE", "Life insurance", "Insurance", 180, 1, 0),
        ("BK-INS-CAR", "Car insurance", "Insurance", 420, 1, 0),
        ("BK-INS-GAD", "Gadget insurance", "Insurance", 60, 1, 0),
        ("BK-POS", "Card terminal", "Business services", 29, 1, 0),
        ("BK-INS-TRAV", "Single-trip travel insurance", "Insurance", 39, 2, 120),
        ("BK-FX", "Foreign currency order", "Payments", 5, 2, 90),
        ("BK-INV-TOP", "Fund savings plan top-up", "Investments", 2.5, 1, 30),
    ],
    "saas": [
        ("SA-PLAN-STA", "Starter plan", "Plans", 29, 4, 0),
        ("SA-PLAN-TEAM", "Team plan", "Plans", 99, 3, 0),
        ("SA-PLAN-BIZ", "Business plan", "Plans", 299, 1, 0),
        ("SA-MOD-SSO", "Single sign-on module", "Add-on modules", 49, 1, 0),
        ("SA-MOD-ANL", "Advanced analytics module", "Add-on modules", 79, 2, 0),
        ("SA-MOD-API", "API access module", "Add-on modules", 39, 2, 0),
        ("SA-MOD-AUD", "Audit log module", "Add-on modules", 29, 1, 0),
        ("SA-MOD-WF", "Workflow automation module", "Add-on modules", 59, 2, 0),
        ("SA-MOD-INT", "CRM integration module", "Add-on modules", 25, 2, 0),
        ("SA-SUP-PRI", "Priority support", "Services", 99, 1, 0),
        ("SA-SVC-TRN", "Onboarding training", "Services", 490, 1, 0),
        ("SA-CRD-STO", "Extra storage 100 GB", "Credits", 10, 2, 60),
        ("SA-CRD-SMS", "SMS credits, 1,000", "Credits", 15, 2, 30),
        ("SA-CRD-SEAT", "Extra seats, 5 pack", "Credits", 45, 2, 90),
    ],
}
# anchor sku: (complement sku, probability, mean days to the purchase when not in the same order)
COMPLEMENTS = {
    "EL-LAP-13": (("EL-ACC-BAG", 0.25, 10), ("EL-ACC-MSE", 0.35, 7), ("EL-ACC-HUB", 0.4, 5), ("EL-ACC-SLV", 0.3, 7)),
    "EL-LAP-15": (("EL-ACC-BAG", 0.35, 10), ("EL-ACC-MSE", 0.4, 7), ("EL-ACC-HUB", 0.35, 5)),
    "EL-PHN-A5": (("EL-ACC-CASE", 0.55, 3), ("EL-ACC-SCR", 0.5, 3), ("EL-ACC-CHG", 0.3, 10), ("EL-ACC-BUDS", 0.15, 21)),
    "EL-PHN-XP": (("EL-ACC-CASE", 0.6, 3), ("EL-ACC-SCR", 0.5, 3), ("EL-ACC-CHG", 0.35, 10), ("EL-ACC-BUDS", 0.3, 21)),
    "EL-TV-55": (("EL-ACC-MNT", 0.3, 7), ("EL-ACC-SBR", 0.2, 21), ("EL-ACC-HDMI", 0.35, 5), ("EL-ACC-STR", 0.2, 14)),
    "EL-TV-65": (("EL-ACC-MNT", 0.4, 7), ("EL-ACC-SBR", 0.4, 21), ("EL-ACC-HDMI", 0.3, 5)),
    "EL-CAM-M1": (("EL-ACC-LNS", 0.3, 30), ("EL-ACC-TRI", 0.3, 21), ("EL-ACC-CBAG", 0.35, 10), ("EL-CNS-SD", 0.55, 3)),
    "EL-CON-G1": (("EL-ACC-CTRL", 0.45, 7), ("EL-SUB-GAME", 0.4, 5), ("EL-CNS-BAT", 0.3, 14)),
    "EL-PRN-I1": (("EL-CNS-INKB", 0.7, 30), ("EL-CNS-INKC", 0.5, 45), ("EL-CNS-PAPER", 0.25, 30)),
    "EL-COF-E1": (("EL-CNS-BEAN", 0.75, 5), ("EL-CNS-DESC", 0.4, 45)),
    "EL-TAB-11": (("EL-ACC-PEN", 0.3, 10), ("EL-ACC-KBD", 0.3, 10), ("EL-ACC-SCR", 0.3, 5), ("EL-CNS-CLN", 0.15, 30)),
    "BK-ACC-CUR": (("BK-CARD-DEB", 0.8, 3), ("BK-CARD-CRED", 0.3, 45), ("BK-ACC-SAV", 0.35, 30), ("BK-OVD", 0.2, 60)),
    "BK-ACC-PREM": (("BK-CARD-CRED", 0.6, 7), ("BK-CARD-GOLD", 0.35, 30), ("BK-INS-TRAV", 0.4, 60), ("BK-ACC-SAV", 0.4, 30)),
    "BK-ACC-BUS": (("BK-POS", 0.4, 14), ("BK-CARD-CRED", 0.3, 21), ("BK-OVD", 0.25, 45)),
    "BK-LOAN-MORT": (("BK-INS-HOME", 0.6, 7), ("BK-INS-LIFE", 0.45, 21), ("BK-ACC-SAV", 0.2, 60)),
    "BK-LOAN-CAR": (("BK-INS-CAR", 0.65, 5), ("BK-INS-GAD", 0.05, 60)),
    "BK-LOAN-PERS": (("BK-INS-GAD", 0.15, 30), ("BK-INV-TOP", 0.1, 90)),
    "SA-PLAN-STA": (("SA-MOD-API", 0.25, 21), ("SA-MOD-INT", 0.3, 14), ("SA-CRD-STO", 0.3, 45), ("SA-CRD-SEAT", 0.25, 60)),
    "SA-PLAN-TEAM": (
        ("SA-MOD-ANL", 0.35, 30), ("SA-MOD-WF", 0.35, 21), ("SA-MOD-INT", 0.4, 14),
        ("SA-CRD-SMS", 0.3, 14), ("SA-CRD-SEAT", 0.4, 45), ("SA-SVC-TRN", 0.15, 7),
    ),
    "SA-PLAN-BIZ": (
        ("SA-MOD-SSO", 0.6, 7), ("SA-MOD-AUD", 0.5, 14), ("SA-MOD-ANL", 0.5, 21),
        ("SA-SUP-PRI", 0.45, 14), ("SA-SVC-TRN", 0.35, 7),
    ),
}  # fmt: skip
FIRST_NAMES = (
    "Anna", "Ben", "Chloé", "David", "Elif", "Felix", "Grace", "Hugo", "Ines", "Jonas", "Kasia", "Liam",
    "Maria", "Noah", "Olivia", "Pedro", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wei", "Yara", "Zoe",
)  # fmt: skip
LAST_NAMES = (
    "Andersson", "Brown", "Costa", "Dubois", "Evans", "Fischer", "García", "Hansen", "Ivanova", "Jones",
    "Kowalski", "Lambert", "Müller", "Nowak", "O'Brien", "Rossi", "Schmidt", "Smith", "Tanaka", "van Dijk",
)  # fmt: skip
# country, IANA time zone, share of customers
COUNTRIES = (
    ("United Kingdom", "Europe/London", 0.22), ("Germany", "Europe/Berlin", 0.16),
    ("France", "Europe/Paris", 0.12), ("Netherlands", "Europe/Amsterdam", 0.07),
    ("Spain", "Europe/Madrid", 0.07), ("Italy", "Europe/Rome", 0.06), ("Ireland", "Europe/Dublin", 0.04),
    ("Sweden", "Europe/Stockholm", 0.03), ("Poland", "Europe/Warsaw", 0.04),
    ("United States", "America/New_York", 0.07), ("United States", "America/Chicago", 0.03),
    ("United States", "America/Los_Angeles", 0.04), ("Canada", "America/Toronto", 0.02),
    ("Australia", "Australia/Sydney", 0.02), ("Japan", "Asia/Tokyo", 0.01),
)  # fmt: skip
EMAIL_DOMAINS = ("example.com", "example.net", "example.org")  # reserved for documentation (RFC 2606)
