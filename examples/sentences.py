"""Real English sentences for the text-model benchmarks and tests (written for this repo, no data set).

The first 24 are the ones the benchmarks have always used, and their slices are
fixed (benchmarks/dynamic_shapes.py calibrates on ``SENTENCES[:12]`` and serves
``SENTENCES[12:24]``); later ones were added for evaluation sets of 32 sentences
disjoint from calibration.
"""

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.", "A man is playing a guitar on stage.",
    "Quantization reduces model size and speeds up inference on CPUs.", "How do I reset my password?",
    "Stock markets fell sharply after the announcement.", "She loves reading books about ancient history.",
    "The weather today is sunny with a chance of rain in the evening.",
    "Graph compilers rewrite neural networks for faster execution.", "My flight was delayed by three hours.",
    "The recipe calls for two cups of flour and a pinch of salt.", "Children are playing football in the park.",
    "The new phone has a better camera and a longer battery life.", "Please send me the report by Friday.",
    "Scientists discovered a new species of frog in the rainforest.", "He fixed the bug in the parser last night.",
    "The museum is closed on Mondays.", "I would like to book a table for four people.",
    "Electric cars are becoming cheaper every year.", "The orchestra performed Beethoven's ninth symphony.",
    "Our team won the championship after a long season.", "The doctor recommended more sleep and less coffee.",
    "This hotel offers free breakfast and airport shuttle.", "Rain is expected to continue through the weekend.",
    "The committee approved the budget for next year.",
    # 48 more (added for benchmarks/quantize.py's 32-sentence evaluation, disjoint from calibration)
    "The train to the airport leaves every twenty minutes.", "Can you recommend a good Italian restaurant nearby?",
    "The company reported record profits in the third quarter.", "Water boils at one hundred degrees Celsius.",
    "My sister is studying medicine at the university.", "Turn left at the second traffic light.",
    "The library has thousands of books in many languages.", "He forgot his umbrella and got soaked in the storm.",
    "Machine learning models need a lot of training data.", "The baby finally fell asleep after midnight.",
    "Prices of fresh vegetables rose during the drought.", "We watched the sunset from the top of the hill.",
    "The software update fixed several security vulnerabilities.", "Please turn off your phone during the movie.",
    "The cat jumped onto the kitchen table and knocked over a glass.", "Our neighbours are renovating their house.",
    "The final exam covers all chapters of the textbook.", "She painted the walls of her bedroom light blue.",
    "Heavy traffic made us late for the concert.", "The river flooded the fields after days of rain.",
    "I need to renew my passport before the trip.", "The chef prepared a delicious three-course dinner.",
    "Solar panels convert sunlight into electricity.", "The bank will be closed on the public holiday.",
    "He runs five kilometres every morning before work.", "The new bridge connects the two halves of the city.",
    "Do you know where I can buy a charger for this laptop?", "The teacher asked the students to read aloud.",
    "A strong earthquake shook the coastal town last night.", "The garden is full of roses and tulips in spring.",
    "Our internet connection has been slow all week.", "The museum opened a new exhibition on modern art.",
    "They adopted a puppy from the local animal shelter.", "The meeting was postponed until next Tuesday.",
    "Fresh bread is delivered to the bakery every morning.", "The spacecraft entered orbit around Mars.",
    "Wearing a helmet protects cyclists from serious injuries.", "The store offers a discount for students.",
    "He apologised for arriving late to the interview.", "The mountains were covered in snow until June.",
    "This printer keeps jamming whenever I print double-sided.", "The festival attracts visitors from all over the world.",
    "She translated the novel from French into English.", "The hospital is hiring more nurses this year.",
    "A cup of green tea contains less caffeine than coffee.", "The referee showed the defender a red card.",
    "The old castle stands on a hill above the village.", "We should back up our files before installing the update.",
]
