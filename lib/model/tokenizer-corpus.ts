/**
 * The default training text for generated tokenizers (`buildByteLevelBpe`) and the two chat templates the model
 * presets use. The corpus is original plain English written for this package: everyday topics, numbers, dates,
 * prices, punctuation and a few code-like lines, so a small BPE vocabulary learns common words, digits and
 * symbols and the generated models read and write ordinary text.
 *
 * @example
 * import { buildByteLevelBpe, DEFAULT_CORPUS, CHATML_TEMPLATE } from 'moe-offload';
 * const { tokenizerJson } = buildByteLevelBpe({ corpus: DEFAULT_CORPUS, vocabSize: 512,
 *   specialTokens: ['<|endoftext|>', '<|im_start|>', '<|im_end|>'], eosToken: '<|im_end|>', chatTemplate: CHATML_TEMPLATE });
 */

/** About 8 KB of original English prose, numbers and code-like lines. */
export const DEFAULT_CORPUS: string = `The morning was cool and bright, so we walked to the market instead of taking the bus. The baker on the corner
had just opened his shop, and the smell of fresh bread filled the whole street. We bought two loaves, a dozen eggs
and a small jar of honey. The total came to $12.40, and the baker gave us a free roll because it was the first sale
of the day.

At home, the kitchen table was covered with letters, old receipts and a map of the city. My sister wanted to plan a
trip for the weekend. "Where should we go?" she asked. I said the coast would be nice in the spring, but the
mountains are quieter. In the end we chose the lake: it is only 45 minutes away by train, and the water is warm
enough for a swim after the first week of June.

Cooking dinner for six people is easier than it sounds. Start with a large pot of water for the pasta. While it
heats, chop two onions, three cloves of garlic and a handful of tomatoes. Fry the onions slowly in olive oil until
they turn golden, then add the garlic for one minute and the tomatoes for ten. Season with salt, pepper and a
little sugar. When the pasta is ready, mix everything together and serve it with grated cheese and a green salad.

The garden needs more work this year. The roses were planted in 2019, and they have grown taller than the fence.
We should cut them back in the autumn, when the flowers are gone. The vegetable beds are doing well: the beans
climb a little higher every day, the carrots are almost ready, and the first small pumpkins are hiding under their
big leaves. Water the plants early in the morning or late in the evening, never at noon.

Our neighbour runs every day, rain or shine. He says the secret is to start slowly: run for one minute, walk for
two, and repeat that eight times. After a month, run for five minutes and walk for one. He kept a notebook with
every run since 2015 and told me he has covered more than 12,000 kilometres. That is about the distance from
London to Sydney, he said with a smile.

A short list of things to do today:
1. Pay the electricity bill (due on 3 March).
2. Call the dentist and move the appointment from Tuesday to Thursday.
3. Return the library books; two of them are already late.
4. Buy batteries, light bulbs, soap and a new toothbrush.
5. Answer the email from the school about the summer camp.

The weather report for the next five days: Monday, sunny with a high of 21 degrees; Tuesday, clouds in the
afternoon; Wednesday, light rain and wind from the west; Thursday, heavy rain, up to 30 millimetres; Friday, dry
again and a little warmer. The chance of snow is zero, which is good news for the cyclists and bad news for the
children who hoped to build a snowman.

People often ask how a computer can read a sentence. It cannot, at least not the way we do. First the text is cut
into small pieces called tokens: whole words, parts of words, spaces and punctuation marks. Each token has a
number, and the computer works only with those numbers. A common word such as "the" or "and" gets a single token,
while a rare word is split into several pieces. Numbers like 1234 or 3.14159 are split into digits and groups of
digits, and a long web address becomes many tokens.

Here is a small program that counts words in a file:

    import fs from 'node:fs';
    const text = fs.readFileSync('notes.txt', 'utf8');
    const counts = new Map();
    for (const word of text.toLowerCase().split(/\\s+/)) {
      if (word.length === 0) continue;
      counts.set(word, (counts.get(word) ?? 0) + 1);
    }
    console.log([...counts].sort((a, b) => b[1] - a[1]).slice(0, 10));

And the same idea in a few lines of Python:

    def count_words(path):
        counts = {}
        with open(path) as f:
            for line in f:
                for word in line.lower().split():
                    counts[word] = counts.get(word, 0) + 1
        return sorted(counts.items(), key=lambda kv: -kv[1])[:10]

A configuration file might look like this: {"name": "demo", "version": "1.0.2", "port": 8080, "debug": false}.
To start the server, run: npm run start -- --port=8080 && curl http://localhost:8080/health

The train to the city leaves at 7:15, 7:45 and 8:20 on weekdays, and every hour on Sundays. A single ticket costs
EUR 3.50, a day pass 9.00 and a monthly pass 58.00. Children under 6 travel for free. If the train is more than
20 minutes late, you can ask for half of the price back; fill in the form on the website within 14 days.

We visited my grandmother on Sunday. She is 87 years old and still bakes a cake every week. This time it was an
apple cake with cinnamon, and she told us the recipe: 250 g of flour, 200 g of butter, 150 g of sugar, three eggs,
four apples and a spoon of cinnamon. Bake it for 40 minutes at 180 degrees. "Don't open the oven too early," she
warned, "or the cake will fall."

Learning a new language takes patience. Read a little every day, listen to the radio, and don't be afraid to make
mistakes. Write down new words in a notebook, together with a short example sentence. Review the notebook on the
bus or while you wait for the kettle to boil. After a few months you will notice that you understand more than you
expected, and that is the moment when learning becomes fun.

The meeting is on Wednesday at 10:30 in room 204. Please bring the report, the budget for the third quarter and
your ideas for the new office. We have 3 hours, so let's keep each topic to about 20 minutes. Questions? Send them
to the team before Tuesday evening. Thank you, and see you there!

Some questions have simple answers. How many days are in a week? Seven. How many hours are in a day? Twenty-four.
What is 12 times 12? It is 144. What is half of 99? It is 49.5. Which is larger, 0.7 or 0.65? The first one,
because 0.70 is more than 0.65. If a shirt costs 20 dollars and is sold at 25% off, the new price is 15 dollars.

On rainy evenings we play board games. My brother always wins at chess, my father is hard to beat at cards, and I
am good at word games. Last night I found a word worth 48 points, and nobody believed it was real until we looked
it up in the dictionary. We finished the evening with tea, biscuits and a long story about a cat that lived on a
boat and visited every port on the river.

The bicycle needs new brakes, a chain and two tyres. The shop said the repair will take about a week and cost
around 90 pounds. Until then I will walk to work, which takes 35 minutes instead of 15. It is not so bad: the path
goes along the river, past the old mill, the school and the little park where the ducks wait for bread.
`;

/**
 * ChatML chat template (Qwen / OLMoE-instruct style): each message as `<|im_start|>role\ncontent<|im_end|>\n`, and
 * `<|im_start|>assistant\n` when `add_generation_prompt` is set.
 */
export const CHATML_TEMPLATE: string =
  "{%- for message in messages -%}" +
  "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}" +
  '{%- endfor -%}' +
  "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}";

/**
 * Instruction template (Mixtral style): `bos_token`, then `[INST] user [/INST]` and `assistant eos_token` turns.
 * Roles must alternate user/assistant starting with user; anything else raises an error, as HF's template does.
 */
export const INST_TEMPLATE: string =
  '{{- bos_token -}}' +
  '{%- for message in messages -%}' +
  "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}" +
  "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}" +
  '{%- endif -%}' +
  "{%- if message['role'] == 'user' -%}{{- '[INST] ' + message['content'] + ' [/INST]' -}}" +
  "{%- elif message['role'] == 'assistant' -%}{{- message['content'] + eos_token -}}" +
  "{%- else -%}{{- raise_exception('Only user and assistant roles are supported!') -}}" +
  '{%- endif -%}' +
  '{%- endfor -%}';
