"""Built-in word lists for invented names and phrases, split deterministically into train/test.

Generators build keys ("humble-tulip"), phrase values ("quiet river sings") and people's
names ("Ines Okafor") from these lists. A small model trained on a split must learn to *find and copy* a key, not to recall a
familiar one, so each split gets hundreds of words: every word belongs to exactly one split,
chosen by a hash of the word itself (about two thirds train, one third test). The assignment
never depends on list order or on the Python version, so adding a word never moves another
one across splits, and train and test never share a word.

    split_words(ADJECTIVES, "test")   # the test split's adjectives, in list order
"""

from __future__ import annotations

import hashlib
from functools import cache

from rlm_env.tasks.sizing import check_split

ADJECTIVES = tuple(
    """
    crimson amber silent rapid golden hollow bitter lucky frosty gentle rusty violet brave misty
    proud sandy scarlet copper muted swift silver vacant sour fortunate icy tender dusty indigo bold
    foggy humble stony able absent acidic active adept agile airy alert alpine ample ancient angry
    antique anxious arctic arid ashen astute atomic autumn awake azure balmy bare barren basic beige
    bleak blind blissful blond blunt bony bouncy brash breezy bright brisk brittle broad bronze
    bubbly bulky burly busy calm candid carefree careful casual celestial chalky charming cheeky
    cheerful chilly chubby civic clever cloudy clumsy coastal cobalt cocky coral cosmic cosy crafty
    creamy crisp crooked cruel crunchy cuddly curious curly cyan dainty damp dapper daring dark
    dashing dazzling deaf dear decent deep deft dense desert devout dewy dim dire distant dizzy
    docile dotted drab dreamy dry dull dusky eager early earnest earthy easy eerie elastic elder
    electric elegant elfin emerald empty endless epic equal even exotic faded faint fair faithful
    famous fancy far fast fearless feisty fertile fervent festive fickle fierce fiery filthy fine
    firm flaky flat fleet flimsy floral fluffy fluid fond formal fragile frail frank free fresh
    fretful frigid frilly frozen frugal funny furry fussy fuzzy gaudy giant giddy gilded glad glassy
    gleaming glossy glowing gloomy glum good graceful grand granite grassy grave gray greasy great
    greedy grim gritty groovy grumpy hairy handy happy hardy harsh hasty hazy healthy hearty heavy
    hefty hidden hilly hoarse holy homely honest hopeful huge humid hungry husky idle immense inky
    inner ivory jade jagged jaunty jolly jovial joyful juicy jumbo jumpy keen kind kingly knotty
    lacy lanky large late lavish lazy leafy lean learned lemon level light lilac limber limp liquid
    little lively livid local lofty lonely long loose lost loud lovely low loyal lucid lunar lush
    magenta majestic mauve meager mellow merry messy mighty mild milky mini minty modern modest
    moist moldy molten moody mossy motley muddy murky mushy musty narrow nasty natural naval neat
    needy nervous new nice nimble noble noisy normal nosy novel nutty oaken obscure ocean odd open
    orange orderly ornate pale palm pastel patient peaceful pearly perky petite pink placid plain
    plucky plump plush polar polite portly posh prickly prime pristine prompt puffy pure purple
    quaint quick quirky radiant ragged rainy rare raspy ready regal remote rich rigid ripe robust
    rocky rosy rotund rough round royal ruby rugged rural rustic sable sacred salty scaly scenic
    secret serene shabby shaggy shaky shallow sharp shiny short shrewd shy silky simple sincere
    sleek sleepy slender slim slow sly small smart smoky smooth snowy snug soft solar solemn solid
    somber sooty sparse speedy spicy spiky spotty spry square stale stark starry steady steep sticky
    stiff stout strange strict striped strong sturdy subtle sudden sugary sulky sullen sunny super
    supple sweet tall tame tangy tart taut teal tepid terse thick thin thirsty thorny tidy tiny
    tired topaz tough tragic tranquil tropical tubby twilight ugly umber upbeat urban valiant vast
    velvet verdant vivid wacky wandering warm wary watery wavy weary wee wicked wide wild windy
    wintry wiry wise witty wobbly wooden woolly worn yellow young zany zealous zesty
""".split()
)
"""Adjectives for invented names (keys like "humble-tulip"), both splits."""

NOUNS = tuple(
    """
    otter heron falcon badger lantern anchor meadow quarry walrus cactus harbor comet pebble thistle
    orchid beacon beaver stork kestrel ferret candle compass prairie canyon narwhal juniper jetty
    meteor marble nettle tulip lighthouse acorn albatross alder almond anvil apricot archer arrow
    aspen atlas attic avocado axle badge bagel balcony ballad bamboo banjo banner barley barn barrel
    basalt basin basket bassoon bayou beetle bell bison blossom boulder bramble bridge brook buffalo
    bugle bunker burrow butte cabin camel canal canoe canvas caravan cardinal carp castle cathedral
    cavern cedar cellar chapel cheetah chestnut chimney cinder citadel clover cobra cocoa coyote
    crane crater cricket crow cypress dagger daisy delta dolphin donkey dove dragon drum dune eagle
    easel elk elm ember fern fiddle finch fjord flamingo flute forge fountain fox frigate frog gable
    galaxy garnet gazelle geyser glacier goblet goose gorge gorilla granary grotto gull hamlet
    hammer hare harp hawk hazel hedgehog helmet hemlock hermit hippo hornet hyena ibis iguana inlet
    island jackal jaguar jasmine jay jellyfish kayak kettle kiln kite koala lagoon lark lava ledge
    lemur leopard lily lizard llama lobster locket lotus lynx magnet magpie mallard mango mantis
    maple marsh marten mason mast meadowlark melon mesa mill mink minnow mole monsoon moose moth
    mule mussel nectar newt nightingale nutmeg oak oasis ocelot octopus olive opal orca oriole
    osprey owl oyster paddle pagoda palace panda panther parrot pasture peach pelican penguin pepper
    petal pheasant piano pigeon pine pinnacle pirate plateau plover plum pony poplar porch possum
    prism puffin puma quail quill rabbit raccoon radish rampart raven reef reindeer ridge river
    rocket rooster rose saddle salmon sapphire sardine satchel scarab sceptre schooner scorpion seal
    sequoia shark shell shovel shrine shrimp sickle sierra skylark sloth snail sparrow spider spire
    sponge spruce squid squirrel stallion starling steeple summit swallow swan sycamore tapir temple
    terrace thrush tiger timber toad torch tortoise tower trout trumpet tundra turkey turtle valley
    vessel viaduct viola viper vulture wagon warbler wasp weasel whale wheat willow windmill wolf
    wombat woodpecker wren yak yew zebra zeppelin abbey aqueduct bazaar bastion buoy cairn carousel
    cask cauldron chalice cloister cornet corridor cottage crescent crypt cupola dinghy dome dungeon
    estuary fortress galleon gazebo glade gondola harpoon hatchet headland hearth heath kingfisher
    labyrinth lectern loom mandolin manor marina meridian minaret moat monastery mosaic obelisk
    observatory orchard outpost paddock palisade parapet pavilion pendulum periscope plaza quay
    rapids rotunda sanctum scaffold sextant silo spindle stockade tavern telescope thimble trellis
    trident turret tapestry vineyard volcano wharf yurt
""".split()
)
"""Nouns for invented names, both splits."""

VERBS = tuple(
    """
    sings dances sleeps hums runs wakes whistles glows drifts floats wanders roars whispers shines
    blooms climbs dives flies jumps laughs listens marches nods paints ponders reads rests rides
    roams sails shivers sighs skips smiles sneezes snores soars sparkles spins sprints stares stirs
    strolls swims swings sways thinks trembles tumbles twirls waits waves weeps winks works writes
    yawns yells bakes barks bellows blinks bounces bows breathes brews bubbles buzzes calls carves
    chants chases cheers chirps chuckles clatters clings cooks coughs crawls creaks cries crouches
    dashes digs dozes dreams drums echoes fades fiddles flickers flutters folds frowns gallops gazes
    giggles glides gleams glistens grins growls grumbles gulps hops howls hurries juggles kneels
    knits knocks leaps lingers lounges mumbles murmurs nibbles paces peeks plays plods prances purrs
    quivers rambles rattles ripples rises rumbles rustles scurries shimmers shouts shuffles sketches
    slides slumbers smoulders sniffs snoozes sobs sprouts squeaks stamps stomps stretches strides
    stumbles sulks swoops tiptoes toils travels trots tugs twinkles twitches waddles wiggles wobbles
    wriggles yodels zooms
""".split()
)
"""Third-person verbs for three-word phrase values ("quiet river sings"), both splits."""

FIRST_NAMES = tuple(
    """
    Marta Jonas Aiko Pedro Leila Tomas Ingrid Kwame Nadia Oskar Beatriz Emil Hana Ivo Lucia Matteo
    Noor Rasmus Selma Tobias Vera Yusuf Zofia Anton Clara Dario Elin Felix Greta Hugo Elena Rafael
    Yuki Samir Greer Lukas Amara Dmitri Sofia Henrik Alba Bruno Cyra Dag Esme Filip Gaia Idris Jana
    Kasper Livia Milos Nell Otto Petra Quinn Runa Stellan Thea Viggo Maria Leilani Abel Ada Adrian
    Agnes Aino Alma Amir Anders Andrea Anika Ansel Arlo Astrid Axel Ayla Basil Bea Benedikt Bianca
    Boris Brigid Caleb Camille Carmen Cecil Celeste Chiara Cosima Dalia Damian Daphne Delia Dina
    Dorian Edda Edgar Edith Elif Eliza Emeric Enzo Erik Ester Eva Ezra Fabian Farah Faye Fiona Flora
    Frida Gael Gideon Gilda Giulia Gustav Hakon Halima Hedda Helga Hiro Ida Ilse Imogen Ines Irene
    Isak Ivan Jakob Joanna Jorge Jude Juno Kai Kalinda Karin Keiko Kenji Kira Klaus Lara Lars Leon
    Leopold Lina Linnea Lorenzo Lotte Luca Lydia Mads Maeve Magnus Malin Marek Marius Mateo Maya
    Mika Mina Mirela Moritz Nadim Naomi Nico Nils Nina Ola Olga Oriana Orla Osman Pablo Paola Pavel
    Pia Priya Rania Remy Rhea Ronja Rosa Ruben Sabine Saga Salma Santiago Sven Tariq Teodor Tilde
    Timo Tova Ulla Ulrik Una Valeria Vidar Viola Wanda Wilhelm Xenia Yara Yasmin Yvonne Zara Zeno
    Zoltan Adele Ahmed Akira Alina Ambrose Anouk Arvid Beatrix Bertil Carla Cassius Cedric Dagny
    Dante Desmond Eamon Elodie Elsa Emmett Esther Fenna Freya Gunnar Hamid Hattie Hector Ilona Inge
    Isolde Jarl Joaquin Jorunn Kamala Konrad Lennart Lotta Lucian Marit Mercy Mirko Nalani Nestor
    Odile Olaf Pascal Quentin Ragna Reza Rolf Sanna Signe Silas Solveig Tamsin Tarek Ugo Vesna
    Walter Wren Yannick Zelda Zuzana Amos Bodil Ciaran Dorothea Eino Fatima Gisela Harald Inka Jonah
    Kerstin Leif Margit Nikolai Ottilie Per Rosalind
""".split()
)
"""Given names for invented people (multihop, oolong), both splits."""

SURNAMES = tuple(
    """
    Velkov Lindqvist Moreau Tanaka Alvarez Haddad Novak Berg Mensah Petrov Quist Sandoval Brenner
    Castell Dufresne Eklund Falk Gruber Holm Ibsen Jovanic Karlsen Laurent Mercer Nyberg Orlov
    Paredes Rask Soler Tamm Okafor Rossi Nakamura Castillo Farouk Kowalski Dahl Asante Ivanova Aberg
    Bianchi Cordova Drummond Esposito Fontaine Galli Hartmann Iverson Jensen Kaur Lombardi Marsh
    Nilsen Ostrom Pellegrini Ruiz Strand Takeda Unger Varga Abbott Achterberg Adler Ahlberg Albrecht
    Almeida Amundsen Andersen Arnaud Aslan Bakker Barros Bauer Beaumont Becker Bergman Blom
    Bondarenko Brandt Brooks Carvalho Chandra Chen Cohen Conti Costa Crane Cruz Dalton Demir
    Dimitrov Dobson Dorsey Duarte Edwards Engel Erikson Fabbri Ferreira Fischer Fleming Fonseca
    Foster Franke Fuentes Garcia Gaspar Greco Grimaldi Gunther Haas Hale Hansen Hayashi Hedlund
    Herrera Hoffman Horvat Hughes Ishikawa Jakobsen Janssen Jimenez Kadir Kagame Kato Keller Kimura
    Klein Koch Kovac Kramer Kruger Lambert Larsen Lehmann Leone Lindberg Lopez Lund Maier Marino
    Martens Mazur Medina Meyer Miller Molina Monti Morales Moretti Munoz Nagy Navarro Neumann
    Nieminen Nordin Nowak Oliveira Olsen Ortega Osei Palmer Pavlov Pereira Perez Pinto Popescu
    Quintero Ramos Reyes Richter Rios Rivera Romano Rosen Russo Sato Schmidt Schneider Schubert
    Serrano Silva Simon Sorensen Suzuki Svensson Szabo Tamura Thorsen Toth Torres Ueda Valdez
    Vasquez Vogel Wagner Walsh Weber Werner Wolff Yamada Yilmaz Zamora Zeller Zimmermann Acosta
    Bergstrom Calloway Delacroix Eriksen Figueroa Gallagher Halloran Ingram Jarvis Kessler Lachance
    Montague Nordqvist Oyelaran Prescott Quiroga Rutherford Salinas Thornton Underhill Valente
    Whitaker Yoshida Zubiri Arce Blackwood Caruso Dunbar Ellison Forsberg Garrido Hollander
    Izquierdo Jaramillo Kinsella Lundgren Mancini Norberg Obrien Pacheco Ricci Santoro Tillman Ulloa
    Vinter Westergaard Abernathy Bellamy Coleridge Devereux Everett Fairweather Greenwood Hawthorne
    Ashworth
""".split()
)
"""Family names for invented people (multihop, oolong), both splits."""


def word_split(word: str) -> str:
    """The split a word belongs to: "test" for one word in three (by its SHA-256), else "train"."""
    digest = hashlib.sha256(f"rlm-env/words/{word}".encode()).digest()
    return "test" if digest[0] % 3 == 0 else "train"


@cache
def split_words(words: tuple[str, ...], split: str) -> tuple[str, ...]:
    """The words of `words` that belong to `split`, in their original order."""
    check_split(split)
    return tuple(w for w in words if word_split(w) == split)
