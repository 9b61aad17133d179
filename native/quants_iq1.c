/* IQ1_S and IQ1_M (quants_iq1.h): the ternary grid, its neighbour lists, the quantizers bit-exact with ggml's
   quantize_iq1_s / quantize_iq1_m (what ggml_quantize_chunk runs), the dequantizers, and the scalar dot products in
   the order of ggml's generic kernels. Same float rules as quants_k.c: fp32, ggml's order, no contraction.

   The grid: 2048 patterns of 8 values in {-1, 0, 1}, stored as 2 bits per value (value + 1) in IQ1_CODES (ggml's
   kgrid_1bit_2048). The quantizer rounds each group of 8 to values in {0, 1, 2} (a 16-bit code u of 2-bit fields);
   a u that is not a grid pattern is replaced by the best of its neighbours: the grid patterns at the three smallest
   distances from it, nearest first, ties by grid index (ggml's iq2xs_init_impl for the 1-bit grid, computed here
   only for the 3^8 codes the quantizer can produce). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "quants_iq1.h"

static const uint16_t IQ1_CODES[IQ1_NGRID] = {
    0, 2, 5, 8, 10, 17, 21, 32, 34, 40, 42, 69, 81, 84, 86, 101,
    128, 130, 136, 138, 149, 160, 162, 168, 170, 260, 261, 273, 276, 278, 281, 282,
    293, 321, 326, 329, 338, 341, 346, 353, 356, 358, 360, 389, 401, 404, 406, 421,
    512, 514, 520, 522, 533, 544, 546, 552, 554, 581, 593, 601, 612, 617, 640, 642,
    648, 650, 657, 661, 665, 672, 674, 680, 682, 1041, 1044, 1046, 1061, 1089, 1097, 1109,
    1114, 1124, 1125, 1169, 1177, 1189, 1281, 1284, 1285, 1286, 1301, 1304, 1306, 1321, 1344, 1349,
    1354, 1360, 1361, 1364, 1365, 1366, 1369, 1376, 1378, 1381, 1384, 1386, 1409, 1425, 1429, 1432,
    1434, 1441, 1444, 1445, 1446, 1449, 1556, 1561, 1601, 1604, 1616, 1618, 1621, 1624, 1632, 1633,
    1638, 1641, 1669, 1681, 1684, 1689, 2048, 2050, 2056, 2058, 2069, 2080, 2082, 2088, 2090, 2117,
    2129, 2134, 2149, 2176, 2178, 2184, 2186, 2197, 2208, 2210, 2216, 2218, 2309, 2321, 2324, 2329,
    2340, 2341, 2369, 2384, 2385, 2389, 2401, 2404, 2409, 2449, 2452, 2454, 2457, 2469, 2560, 2562,
    2568, 2570, 2581, 2592, 2594, 2600, 2602, 2629, 2641, 2649, 2657, 2661, 2688, 2690, 2693, 2696,
    2698, 2709, 2720, 2722, 2728, 2730, 4112, 4113, 4116, 4121, 4132, 4133, 4161, 4164, 4176, 4181,
    4184, 4193, 4196, 4197, 4201, 4241, 4244, 4246, 4257, 4261, 4353, 4356, 4358, 4361, 4368, 4370,
    4373, 4376, 4385, 4388, 4393, 4421, 4426, 4432, 4433, 4434, 4436, 4437, 4438, 4441, 4448, 4453,
    4484, 4498, 4501, 4513, 4516, 4625, 4628, 4630, 4645, 4672, 4678, 4681, 4690, 4693, 4696, 4698,
    4708, 4710, 4741, 4753, 4756, 4758, 4773, 5121, 5126, 5129, 5140, 5141, 5144, 5145, 5153, 5158,
    5185, 5189, 5190, 5192, 5194, 5201, 5204, 5205, 5206, 5209, 5218, 5221, 5224, 5252, 5257, 5264,
    5268, 5269, 5272, 5273, 5274, 5281, 5284, 5285, 5289, 5378, 5381, 5386, 5393, 5396, 5397, 5398,
    5401, 5408, 5410, 5413, 5416, 5418, 5441, 5444, 5445, 5446, 5457, 5458, 5460, 5461, 5462, 5465,
    5466, 5473, 5476, 5477, 5478, 5481, 5504, 5506, 5508, 5509, 5512, 5514, 5520, 5521, 5524, 5525,
    5526, 5529, 5530, 5536, 5538, 5541, 5633, 5636, 5637, 5638, 5653, 5654, 5656, 5658, 5665, 5670,
    5696, 5698, 5700, 5701, 5704, 5706, 5713, 5717, 5718, 5720, 5721, 5729, 5732, 5733, 5736, 5737,
    5738, 5766, 5770, 5778, 5781, 5796, 5801, 6161, 6166, 6181, 6209, 6212, 6214, 6217, 6224, 6229,
    6232, 6234, 6240, 6241, 6244, 6246, 6249, 6277, 6289, 6292, 6309, 6416, 6418, 6421, 6426, 6433,
    6437, 6466, 6468, 6469, 6472, 6481, 6484, 6485, 6486, 6489, 6490, 6496, 6501, 6506, 6537, 6545,
    6546, 6549, 6552, 6561, 6566, 6569, 6665, 6678, 6692, 6694, 6724, 6726, 6729, 6736, 6738, 6741,
    6744, 6753, 6758, 6761, 6789, 6801, 6806, 6810, 8192, 8194, 8200, 8202, 8213, 8224, 8226, 8229,
    8232, 8234, 8261, 8273, 8281, 8289, 8293, 8320, 8322, 8328, 8330, 8341, 8352, 8354, 8357, 8360,
    8362, 8453, 8465, 8468, 8473, 8485, 8514, 8516, 8521, 8533, 8536, 8538, 8545, 8548, 8549, 8550,
    8581, 8592, 8598, 8601, 8613, 8705, 8712, 8714, 8721, 8725, 8736, 8738, 8744, 8746, 8773, 8785,
    8790, 8793, 8805, 8833, 8840, 8842, 8849, 8853, 8864, 8866, 8872, 8874, 9221, 9236, 9238, 9241,
    9253, 9284, 9285, 9286, 9289, 9298, 9301, 9304, 9306, 9318, 9349, 9361, 9364, 9369, 9377, 9381,
    9481, 9493, 9505, 9513, 9536, 9541, 9544, 9553, 9556, 9557, 9561, 9570, 9573, 9576, 9609, 9616,
    9620, 9621, 9624, 9626, 9633, 9636, 9638, 9641, 9733, 9744, 9746, 9753, 9765, 9793, 9801, 9813,
    9824, 9825, 9833, 9860, 9862, 9872, 9882, 10240, 10242, 10248, 10250, 10261, 10272, 10274, 10280, 10282,
    10309, 10321, 10324, 10341, 10368, 10370, 10376, 10378, 10400, 10402, 10408, 10410, 10505, 10513, 10516, 10521,
    10533, 10566, 10569, 10578, 10581, 10593, 10596, 10598, 10601, 10629, 10640, 10646, 10649, 10660, 10661, 10752,
    10754, 10760, 10762, 10784, 10786, 10792, 10794, 10821, 10833, 10838, 10841, 10853, 10880, 10882, 10888, 10890,
    10901, 10912, 10914, 10920, 10922, 16389, 16401, 16406, 16421, 16457, 16466, 16469, 16472, 16474, 16481, 16484,
    16486, 16532, 16537, 16545, 16550, 16640, 16641, 16644, 16646, 16649, 16658, 16661, 16662, 16664, 16666, 16673,
    16678, 16681, 16709, 16712, 16714, 16721, 16724, 16725, 16726, 16729, 16730, 16741, 16744, 16746, 16769, 16772,
    16774, 16784, 16786, 16789, 16800, 16801, 16802, 16901, 16913, 16916, 16918, 16933, 16961, 16978, 16981, 16986,
    16996, 17001, 17033, 17044, 17061, 17409, 17429, 17433, 17449, 17477, 17480, 17482, 17489, 17492, 17493, 17494,
    17505, 17506, 17509, 17512, 17514, 17537, 17542, 17545, 17552, 17554, 17557, 17568, 17569, 17577, 17665, 17666,
    17669, 17674, 17681, 17684, 17685, 17686, 17689, 17696, 17701, 17706, 17729, 17732, 17733, 17734, 17737, 17744,
    17745, 17748, 17749, 17750, 17752, 17753, 17761, 17764, 17765, 17766, 17769, 17794, 17796, 17797, 17800, 17809,
    17812, 17813, 17814, 17817, 17818, 17829, 17832, 17834, 17921, 17925, 17929, 17940, 17941, 17944, 17946, 17953,
    17956, 17961, 17984, 17986, 17989, 17992, 18000, 18001, 18002, 18005, 18006, 18009, 18018, 18021, 18024, 18049,
    18053, 18058, 18068, 18069, 18081, 18084, 18086, 18437, 18449, 18453, 18458, 18469, 18498, 18505, 18512, 18517,
    18520, 18529, 18532, 18534, 18537, 18565, 18577, 18580, 18582, 18585, 18597, 18689, 18693, 18694, 18698, 18704,
    18708, 18709, 18712, 18721, 18724, 18726, 18752, 18757, 18762, 18769, 18770, 18772, 18773, 18774, 18777, 18784,
    18786, 18789, 18790, 18794, 18822, 18825, 18834, 18837, 18838, 18840, 18849, 18852, 18854, 18857, 18966, 19012,
    19014, 19017, 19029, 19032, 19034, 19044, 19049, 19092, 19109, 20481, 20484, 20485, 20486, 20489, 20498, 20501,
    20506, 20513, 20516, 20521, 20544, 20549, 20552, 20561, 20564, 20565, 20566, 20569, 20581, 20584, 20614, 20617,
    20629, 20632, 20640, 20641, 20646, 20649, 20741, 20744, 20745, 20746, 20753, 20756, 20757, 20758, 20760, 20761,
    20768, 20773, 20774, 20776, 20778, 20801, 20804, 20805, 20806, 20809, 20816, 20817, 20818, 20820, 20821, 20822,
    20824, 20825, 20826, 20833, 20836, 20837, 20838, 20841, 20866, 20869, 20881, 20884, 20885, 20886, 20889, 20896,
    20901, 20906, 20993, 20998, 21010, 21013, 21018, 21025, 21028, 21058, 21061, 21066, 21073, 21076, 21077, 21078,
    21081, 21090, 21093, 21125, 21136, 21138, 21141, 21145, 21146, 21156, 21508, 21509, 21521, 21524, 21525, 21526,
    21528, 21529, 21537, 21541, 21544, 21546, 21569, 21572, 21573, 21574, 21577, 21578, 21584, 21585, 21588, 21589,
    21590, 21592, 21593, 21594, 21601, 21602, 21604, 21605, 21606, 21609, 21632, 21640, 21642, 21649, 21652, 21653,
    21654, 21657, 21665, 21668, 21669, 21674, 21761, 21762, 21764, 21765, 21766, 21769, 21776, 21777, 21778, 21780,
    21781, 21782, 21785, 21786, 21793, 21796, 21797, 21798, 21801, 21824, 21825, 21826, 21828, 21829, 21830, 21832,
    21833, 21840, 21841, 21842, 21844, 21845, 21846, 21848, 21849, 21850, 21856, 21857, 21860, 21861, 21862, 21864,
    21865, 21866, 21889, 21892, 21893, 21897, 21898, 21904, 21905, 21908, 21909, 21910, 21912, 21913, 21921, 21924,
    21925, 21926, 21929, 22016, 22017, 22018, 22020, 22022, 22024, 22025, 22033, 22036, 22037, 22040, 22041, 22048,
    22049, 22050, 22052, 22053, 22054, 22056, 22057, 22081, 22085, 22086, 22088, 22089, 22090, 22096, 22097, 22098,
    22100, 22101, 22102, 22104, 22105, 22106, 22113, 22116, 22117, 22121, 22146, 22149, 22150, 22152, 22153, 22154,
    22161, 22165, 22170, 22178, 22181, 22182, 22184, 22185, 22532, 22533, 22534, 22537, 22544, 22549, 22552, 22561,
    22570, 22597, 22600, 22602, 22609, 22612, 22613, 22614, 22616, 22617, 22624, 22626, 22628, 22629, 22658, 22665,
    22672, 22674, 22677, 22680, 22689, 22697, 22785, 22786, 22789, 22794, 22801, 22804, 22805, 22806, 22809, 22821,
    22849, 22852, 22853, 22854, 22857, 22864, 22865, 22866, 22868, 22869, 22870, 22872, 22873, 22874, 22881, 22884,
    22885, 22886, 22889, 22913, 22917, 22921, 22929, 22932, 22933, 22934, 22936, 22937, 22949, 23044, 23048, 23061,
    23066, 23072, 23077, 23078, 23081, 23109, 23112, 23113, 23121, 23125, 23126, 23128, 23129, 23138, 23141, 23144,
    23146, 23169, 23178, 23186, 23189, 23190, 23192, 23194, 23201, 24581, 24596, 24598, 24601, 24613, 24644, 24656,
    24661, 24662, 24664, 24666, 24673, 24676, 24678, 24681, 24705, 24726, 24741, 24833, 24836, 24838, 24841, 24850,
    24853, 24865, 24866, 24870, 24873, 24901, 24905, 24913, 24917, 24918, 24921, 24933, 24934, 24938, 24964, 24970,
    24978, 24981, 24993, 24998, 25001, 25105, 25110, 25113, 25152, 25153, 25158, 25173, 25174, 25176, 25184, 25221,
    25233, 25238, 25253, 25617, 25618, 25621, 25622, 25626, 25633, 25638, 25641, 25664, 25666, 25669, 25672, 25674,
    25681, 25684, 25685, 25686, 25689, 25690, 25696, 25698, 25701, 25732, 25733, 25737, 25744, 25746, 25748, 25749,
    25750, 25752, 25754, 25761, 25764, 25769, 25861, 25864, 25866, 25873, 25877, 25878, 25881, 25924, 25925, 25926,
    25929, 25936, 25937, 25940, 25941, 25942, 25945, 25953, 25956, 25957, 25958, 25961, 25990, 25993, 25994, 26001,
    26005, 26006, 26009, 26010, 26018, 26021, 26022, 26024, 26114, 26121, 26133, 26144, 26150, 26152, 26153, 26176,
    26181, 26184, 26186, 26193, 26196, 26197, 26198, 26200, 26202, 26208, 26213, 26216, 26240, 26242, 26245, 26250,
    26260, 26262, 26264, 26265, 26272, 26276, 26278, 26282, 26646, 26649, 26661, 26689, 26706, 26709, 26714, 26721,
    26729, 26757, 26769, 26776, 26790, 26881, 26884, 26896, 26901, 26913, 26916, 26918, 26921, 26944, 26945, 26949,
    26950, 26952, 26961, 26964, 26965, 26966, 26969, 26976, 26981, 26986, 27010, 27012, 27018, 27029, 27041, 27044,
    27045, 27049, 27153, 27158, 27160, 27201, 27204, 27209, 27216, 27221, 27224, 27226, 27236, 27237, 27241, 27270,
    27284, 27288, 27290, 27302, 32768, 32770, 32776, 32778, 32800, 32802, 32808, 32810, 32837, 32848, 32849, 32852,
    32854, 32857, 32869, 32896, 32898, 32904, 32906, 32917, 32928, 32930, 32936, 32938, 33029, 33041, 33044, 33046,
    33049, 33061, 33089, 33092, 33097, 33104, 33106, 33109, 33110, 33112, 33113, 33124, 33126, 33129, 33157, 33161,
    33172, 33174, 33177, 33189, 33280, 33282, 33288, 33290, 33301, 33312, 33314, 33320, 33322, 33361, 33364, 33369,
    33381, 33408, 33410, 33416, 33418, 33429, 33440, 33442, 33448, 33450, 33812, 33817, 33857, 33860, 33873, 33877,
    33882, 33889, 33892, 33897, 33940, 33945, 34049, 34057, 34066, 34069, 34074, 34086, 34089, 34112, 34113, 34117,
    34120, 34129, 34132, 34133, 34134, 34137, 34138, 34149, 34150, 34152, 34154, 34177, 34180, 34182, 34185, 34192,
    34194, 34197, 34200, 34214, 34321, 34326, 34329, 34341, 34369, 34372, 34377, 34378, 34384, 34389, 34393, 34394,
    34401, 34406, 34410, 34437, 34449, 34458, 34468, 34816, 34818, 34824, 34826, 34837, 34848, 34850, 34856, 34858,
    34881, 34885, 34897, 34900, 34905, 34917, 34921, 34944, 34946, 34952, 34954, 34965, 34976, 34978, 34984, 34986,
    35077, 35078, 35089, 35092, 35094, 35109, 35137, 35140, 35142, 35145, 35152, 35154, 35157, 35162, 35169, 35172,
    35205, 35222, 35225, 35237, 35328, 35330, 35336, 35338, 35349, 35360, 35362, 35368, 35370, 35397, 35409, 35412,
    35414, 35456, 35458, 35464, 35466, 35477, 35488, 35490, 35496, 35498, 36869, 36881, 36886, 36888, 36889, 36901,
    36929, 36934, 36937, 36949, 36952, 36954, 36969, 36970, 36997, 37009, 37012, 37014, 37017, 37029, 37121, 37124,
    37126, 37129, 37136, 37141, 37144, 37146, 37153, 37156, 37158, 37161, 37184, 37189, 37200, 37201, 37204, 37205,
    37206, 37209, 37218, 37221, 37252, 37254, 37266, 37269, 37272, 37281, 37284, 37286, 37289, 37381, 37393, 37396,
    37401, 37413, 37444, 37446, 37449, 37456, 37458, 37461, 37464, 37478, 37481, 37509, 37524, 37526, 37545, 37889,
    37892, 37894, 37904, 37909, 37912, 37926, 37952, 37962, 37969, 37972, 37973, 37974, 37976, 37977, 37984, 37985,
    37986, 37989, 38020, 38022, 38034, 38036, 38037, 38040, 38049, 38057, 38144, 38149, 38152, 38154, 38160, 38161,
    38164, 38165, 38166, 38169, 38177, 38181, 38185, 38186, 38209, 38212, 38213, 38214, 38217, 38224, 38225, 38226,
    38228, 38229, 38230, 38232, 38233, 38234, 38241, 38244, 38245, 38246, 38249, 38273, 38277, 38280, 38289, 38290,
    38292, 38293, 38294, 38297, 38298, 38304, 38306, 38309, 38312, 38314, 38401, 38404, 38416, 38421, 38425, 38432,
    38438, 38441, 38469, 38472, 38473, 38481, 38482, 38485, 38486, 38489, 38501, 38504, 38530, 38532, 38537, 38538,
    38546, 38548, 38549, 38564, 38566, 38569, 38917, 38934, 38937, 38949, 38977, 38982, 38992, 38994, 38997, 38998,
    39002, 39012, 39013, 39045, 39057, 39062, 39065, 39077, 39172, 39174, 39177, 39184, 39186, 39189, 39192, 39194,
    39200, 39201, 39204, 39206, 39232, 39234, 39237, 39240, 39242, 39249, 39252, 39253, 39254, 39257, 39266, 39269,
    39270, 39274, 39297, 39300, 39312, 39314, 39317, 39322, 39329, 39334, 39429, 39445, 39461, 39492, 39494, 39497,
    39504, 39509, 39512, 39521, 39557, 39569, 39572, 39573, 39574, 40960, 40962, 40968, 40970, 40981, 40992, 40994,
    41000, 41002, 41029, 41041, 41044, 41046, 41049, 41088, 41090, 41096, 41098, 41109, 41120, 41122, 41128, 41130,
    41221, 41225, 41233, 41236, 41238, 41241, 41242, 41286, 41289, 41297, 41301, 41304, 41306, 41313, 41316, 41349,
    41360, 41362, 41366, 41369, 41474, 41480, 41482, 41488, 41497, 41506, 41512, 41514, 41541, 41553, 41558, 41561,
    41573, 41600, 41602, 41608, 41610, 41621, 41632, 41634, 41640, 41642, 42009, 42021, 42049, 42052, 42064, 42068,
    42069, 42072, 42074, 42081, 42085, 42086, 42088, 42089, 42117, 42246, 42249, 42256, 42258, 42261, 42264, 42278,
    42281, 42306, 42309, 42321, 42324, 42325, 42326, 42329, 42341, 42346, 42369, 42372, 42373, 42374, 42377, 42386,
    42389, 42392, 42501, 42513, 42518, 42522, 42529, 42533, 42564, 42566, 42570, 42578, 42581, 42582, 42584, 42592,
    42594, 42630, 42640, 42645, 42646, 42649, 42657, 42660, 42662, 43008, 43010, 43016, 43018, 43040, 43042, 43048,
    43050, 43089, 43092, 43094, 43097, 43136, 43138, 43144, 43146, 43157, 43168, 43170, 43176, 43178, 43269, 43284,
    43289, 43297, 43301, 43329, 43344, 43349, 43354, 43361, 43366, 43369, 43408, 43414, 43520, 43522, 43528, 43530,
    43552, 43554, 43560, 43562, 43601, 43604, 43606, 43648, 43650, 43656, 43658, 43669, 43680, 43682, 43688, 43690,
};

#define IQ1_MAP_SIZE 43692      /* codes 0 .. the largest grid code + 1, as ggml's map */
#define IQ1_NEIGHBOUR_LEVELS 3  /* distances kept per off-grid code */
#define IQ1S_BLOCK 32
#define IQ1M_BLOCK 16
#define IQ1S_EPS 1e-12f         /* GROUP_MAX_EPS_IQ1_S */
#define IQ1M_EPS 1e-7f          /* GROUP_MAX_EPS_IQ1_M */

static uint64_t grid_bytes[IQ1_NGRID];
const uint64_t *const tk_iq1s_grid = grid_bytes;

/* the signed-byte grid used by the dequantizers and the dot products, built when the library loads */
__attribute__((constructor)) static void build_grid_bytes(void) {
    for (int k = 0; k < IQ1_NGRID; ++k) {
        uint64_t v = 0;
        for (int i = 0; i < 8; ++i) v |= (uint64_t)(uint8_t)(int8_t)(((IQ1_CODES[k] >> 2 * i) & 3) - 1) << 8 * i;
        grid_bytes[k] = v;
    }
}

/* code -> grid index (>= 0), or -(offset + 1) of its neighbour list in neighbours: the count, then the indices
   (IQ1_NEIGHBOUR_ENTRIES in all for the 3^8 - 2048 off-grid ternary codes, a number fixed by the grid) */
#define IQ1_NEIGHBOUR_ENTRIES 332234
static int code_map[IQ1_MAP_SIZE];
static uint16_t neighbours[IQ1_NEIGHBOUR_ENTRIES];
static pthread_once_t neighbours_once = PTHREAD_ONCE_INIT;

static int is_ternary_code(int u) {
    for (int k = 0; k < 8; ++k)
        if (((u >> 2 * k) & 3) == 3) return 0;
    return 1;
}

/* the grid indices at the IQ1_NEIGHBOUR_LEVELS smallest distances from code u, by distance then index, into out;
   returns how many */
static int neighbours_of(int u, uint16_t *out) {
    int count[33] = {0};
    uint8_t dist[IQ1_NGRID];
    for (int j = 0; j < IQ1_NGRID; ++j) {
        int d2 = 0;
        for (int k = 0; k < 8; ++k) {
            int diff = ((IQ1_CODES[j] >> 2 * k) & 3) - ((u >> 2 * k) & 3);
            d2 += diff * diff;
        }
        dist[j] = (uint8_t)d2;
        count[d2]++;
    }
    int n = 0, levels = 0;
    for (int d2 = 0; d2 <= 32 && levels < IQ1_NEIGHBOUR_LEVELS; ++d2) {
        if (!count[d2]) continue;
        levels++;
        for (int j = 0; j < IQ1_NGRID; ++j)
            if (dist[j] == d2) out[n++] = (uint16_t)j;
    }
    return n;
}

static void build_neighbours(void) {
    uint16_t tmp[IQ1_NGRID];
    size_t used = 0;
    for (int i = 0; i < IQ1_MAP_SIZE; ++i) code_map[i] = -1;
    for (int k = 0; k < IQ1_NGRID; ++k) code_map[IQ1_CODES[k]] = k;
    for (int u = 0; u < IQ1_MAP_SIZE; ++u) {
        if (code_map[u] >= 0 || !is_ternary_code(u)) continue;
        const int n = neighbours_of(u, tmp);
        assert(used + 1 + (size_t)n <= IQ1_NEIGHBOUR_ENTRIES);
        code_map[u] = -(int)used - 1;
        neighbours[used] = (uint16_t)n;
        memcpy(neighbours + used + 1, tmp, (size_t)n * sizeof(uint16_t));
        used += 1 + (size_t)n;
    }
    assert(used == IQ1_NEIGHBOUR_ENTRIES);
}

static inline int code_value(int index, int i) { return (IQ1_CODES[index] >> 2 * i) & 3; }

/* The grid index for the group of 8 whose rounded values are L (0..2): the pattern itself when on the grid, else the
   neighbour with the least weighted squared error scale·xg[l] − x (L rewritten to it) — ggml's
   iq1_find_best_neighbour2. */
static int grid_index_for(int8_t *L, const float *xval, const float *weight, float scale, const float *xg,
                          int *on_grid) {
    int u = 0;
    for (int j = 0; j < 8; ++j) u |= L[j] << 2 * j;
    if (code_map[u] >= 0) return code_map[u];
    *on_grid = 0;
    const uint16_t *nb = neighbours - code_map[u] - 1;
    float best = FLT_MAX;
    int index = -1;
    for (int j = 1; j <= nb[0]; ++j) {
        float d2 = 0;
        for (int i = 0; i < 8; ++i) {
            float q = xg[code_value(nb[j], i)];
            float w = weight[i];
            float diff = scale * q - xval[i];
            d2 += w * diff * diff;
        }
        if (d2 < best) {
            best = d2;
            index = nb[j];
        }
    }
    /* only for non-finite errors (weights so large they overflow), where ggml aborts: keep the nearest pattern */
    if (index < 0) index = nb[1];
    for (int i = 0; i < 8; ++i) L[i] = (int8_t)code_value(index, i);
    return index;
}

/* values of a block sorted ascending with their positions, as ggml sorts them (qsort on the value alone: the order
   of equal values is the C library's, the same on both sides) */
struct value_pos { float x; int i; };

static int by_value(const void *a, const void *b) {
    const float l = *(const float *)a, r = *(const float *)b;
    return l < r ? -1 : l > r ? 1 : 0;
}

static void sort_block(const float *xb, int n, struct value_pos *p) {
    for (int j = 0; j < n; ++j) {
        p[j].x = xb[j];
        p[j].i = j;
    }
    qsort(p, (size_t)n, sizeof(*p), by_value);
}

static inline float block_amax(const float *xb, int n) {
    float max = fabsf(xb[0]);
    for (int i = 1; i < n; ++i) max = max > fabsf(xb[i]) ? max : fabsf(xb[i]);
    return max;
}

static inline void block_weights(const float *xb, const float *qw, float sigma2, int n, float *weight) {
    for (int i = 0; i < n; ++i) weight[i] = qw ? qw[i] * sqrtf(sigma2 + xb[i] * xb[i]) : xb[i] * xb[i];
}

static inline float super_block_sigma2(const float *x) {
    float sumx2 = 0;
    for (int i = 0; i < QK_K; ++i) sumx2 += x[i] * x[i];
    return 2 * sumx2 / QK_K;
}

/* L of a block from its sorted order and the two split points: 0 below i1, 1 up to i2, 2 above */
static void split_levels(const struct value_pos *p, int n, int i1, int i2, int8_t *L) {
    for (int j = 0; j < i1; ++j) L[p[j].i] = 0;
    for (int j = i1; j < i2; ++j) L[p[j].i] = 1;
    for (int j = i2; j < n; ++j) L[p[j].i] = 2;
}

/* Σw·q·x and Σw·q² of a group of 8 on grid pattern index with values q = xg[l]·m (m = 1: exactly xg[l]) */
static inline void pattern_sums(int index, const float *xg, float m, const float *w, const float *xb, float *sumqx,
                                float *sumq2) {
    for (int j = 0; j < 8; ++j) {
        const float q = xg[code_value(index, j)] * m;
        *sumqx += w[j] * q * xb[j];
        *sumq2 += w[j] * q * q;
    }
}

/* ------------------------------------------------------------------------------------------------ IQ1_S */

static const float X_P[3] = {-1 + IQ1_DELTA, IQ1_DELTA, 1 + IQ1_DELTA};
static const float X_M[3] = {-1 - IQ1_DELTA, -IQ1_DELTA, 1 - IQ1_DELTA};

/* One block of 32 of an IQ1_S super-block: the exhaustive best split into three levels for either shift, snapped to
   the grid; writes the indices, returns the block's scale (0 for a zero block) and its shift in *shift. */
static float iq1_s_block(const float *xb, const float *weight, uint8_t *qs, uint16_t *qh, int *shift) {
    const int bs = IQ1S_BLOCK;
    *shift = 1;
    if (block_amax(xb, bs) < IQ1S_EPS) return 0;
    struct value_pos p[IQ1S_BLOCK];
    float sumx[IQ1S_BLOCK + 1], sumw[IQ1S_BLOCK + 1];
    sort_block(xb, bs, p);
    sumx[0] = sumw[0] = 0;
    for (int j = 0; j < bs; ++j) {
        sumx[j + 1] = sumx[j] + weight[p[j].i] * xb[p[j].i];
        sumw[j + 1] = sumw[j] + weight[p[j].i];
    }
    float best_score = -FLT_MAX, scale = 0;
    int besti1 = -1, besti2 = -1, best_shift = 0;
    for (int i1 = 0; i1 <= bs; ++i1) {
        for (int i2 = i1; i2 <= bs; ++i2) {
            for (int s = 0; s < 2; ++s) {
                const float *v = s == 0 ? X_P : X_M;
                float sumqx = (sumx[i1] - sumx[0]) * v[0] + (sumx[i2] - sumx[i1]) * v[1] + (sumx[bs] - sumx[i2]) * v[2];
                float sumq2 = (sumw[i1] - sumw[0]) * v[0] * v[0] + (sumw[i2] - sumw[i1]) * v[1] * v[1] +
                              (sumw[bs] - sumw[i2]) * v[2] * v[2];
                if (sumq2 > 0 && sumqx * sumqx > best_score * sumq2) {
                    scale = sumqx / sumq2;
                    best_score = scale * sumqx;
                    besti1 = i1;
                    besti2 = i2;
                    best_shift = s == 0 ? 1 : -1;
                }
            }
        }
    }
    if (besti1 < 0 || besti2 < 0 || best_shift == 0) return 0;
    int8_t L[IQ1S_BLOCK];
    split_levels(p, bs, besti1, besti2, L);
    if (scale < 0) {
        for (int j = 0; j < bs; ++j) L[j] = (int8_t)(2 - L[j]);
        scale = -scale;
        best_shift = -best_shift;
    }
    const float *xx = best_shift == 1 ? X_P : X_M;
    int on_grid = 1, index[IQ1S_BLOCK / 8];
    for (int k = 0; k < bs / 8; ++k)
        index[k] = grid_index_for(L + 8 * k, xb + 8 * k, weight + 8 * k, scale, xx, &on_grid);
    if (!on_grid) {
        float sumqx = 0, sumq2 = 0;
        for (int k = 0; k < bs / 8; ++k) pattern_sums(index[k], xx, 1, weight + 8 * k, xb + 8 * k, &sumqx, &sumq2);
        if (sumqx > 0 && sumq2 > 0) scale = sumqx / sumq2;
    }
    uint16_t h = 0;
    for (int k = 0; k < bs / 8; ++k) {
        qs[k] = (uint8_t)(index[k] & 255);
        h |= (uint16_t)((index[k] >> 8) << 3 * k);
    }
    *qh = h;
    *shift = best_shift;
    return scale;
}

void quantize_row_iq1_s_imatrix(const float *x, void *vy, int64_t n, const float *quant_weights) {
    pthread_once(&neighbours_once, build_neighbours);
    block_iq1_s *y = vy;
    float weight[IQ1S_BLOCK], scales[QK_K / IQ1S_BLOCK];
    int shifts[QK_K / IQ1S_BLOCK];
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        const float *xbl = x + QK_K * ibl;
        y[ibl].d = tk_fp32_to_fp16(0.f);
        memset(y[ibl].qs, 0, sizeof(y[ibl].qs));
        memset(y[ibl].qh, 0, sizeof(y[ibl].qh));
        const float sigma2 = super_block_sigma2(xbl);
        float max_scale = 0;
        for (int ib = 0; ib < QK_K / IQ1S_BLOCK; ++ib) {
            const float *xb = xbl + IQ1S_BLOCK * ib;
            block_weights(xb, quant_weights ? quant_weights + QK_K * ibl + IQ1S_BLOCK * ib : NULL, sigma2, IQ1S_BLOCK,
                          weight);
            scales[ib] = iq1_s_block(xb, weight, y[ibl].qs + 4 * ib, &y[ibl].qh[ib], &shifts[ib]);
            max_scale = max_scale > scales[ib] ? max_scale : scales[ib];
        }
        if (!max_scale) continue;
        const float d = max_scale / 15;
        y[ibl].d = tk_fp32_to_fp16(d * 1.125f); /* ggml's fudge factor */
        const float id = 1 / d;
        for (int ib = 0; ib < QK_K / IQ1S_BLOCK; ++ib) {
            int l = tk_nearest_int(0.5f * (id * scales[ib] - 1));
            l = l < 0 ? 0 : l > 7 ? 7 : l;
            if (shifts[ib] == -1) l |= 8;
            y[ibl].qh[ib] |= (uint16_t)(l << 12);
        }
    }
}

/* ------------------------------------------------------------------------------------------------ IQ1_M */

/* One block of 16 of an IQ1_M super-block: the best split into three levels with a shift per half (k: 0 ++, 1 +-,
   2 -+, 3 --), snapped to the grid; writes the two index lows and the highs, returns the scale, *shift = k. */
static float iq1_m_block(const float *xb, const float *weight, uint8_t *qs, uint8_t *qh, int *shift) {
    const int bs = IQ1M_BLOCK;
    *shift = 0;
    if (block_amax(xb, bs) < IQ1M_EPS) return 0;
    struct value_pos p[IQ1M_BLOCK];
    sort_block(xb, bs, p);
    /* prefix sums per half (each half has its own shift); the sums of a split reduce to T·v[2] − px[i1] − px[i2] */
    float px[2][IQ1M_BLOCK + 1], pw[2][IQ1M_BLOCK + 1];
    px[0][0] = px[1][0] = 0;
    pw[0][0] = pw[1][0] = 0;
    for (int j = 0; j < bs; ++j) {
        const int i = p[j].i, h = i < bs / 2 ? 0 : 1;
        px[h][j + 1] = px[h][j] + weight[i] * xb[i];
        px[1 - h][j + 1] = px[1 - h][j];
        pw[h][j + 1] = pw[h][j] + weight[i];
        pw[1 - h][j + 1] = pw[1 - h][j];
    }
    const float txs[2] = {px[0][bs], px[1][bs]}, tws[2] = {pw[0][bs], pw[1][bs]};
    const float p2 = X_P[2], m2 = X_M[2];
    const float cp1 = X_P[0] * X_P[0] - X_P[1] * X_P[1], cp2 = X_P[1] * X_P[1] - X_P[2] * X_P[2];
    const float cm1 = X_M[0] * X_M[0] - X_M[1] * X_M[1], cm2 = X_M[1] * X_M[1] - X_M[2] * X_M[2];
    float best_score = -FLT_MAX, scale = 0;
    int besti1 = -1, besti2 = -1, best_k = -1;
    for (int i1 = 0; i1 <= bs; ++i1) {
        for (int i2 = i1; i2 <= bs; ++i2) {
            float qx_p[2], qx_m[2], q2_p[2], q2_m[2], sumqx[4], sumq2[4];
            for (int h = 0; h < 2; ++h) {
                const float sx = px[h][i1] + px[h][i2];
                qx_p[h] = txs[h] * p2 - sx;
                qx_m[h] = txs[h] * m2 - sx;
                q2_p[h] = tws[h] * p2 * p2 + pw[h][i1] * cp1 + pw[h][i2] * cp2;
                q2_m[h] = tws[h] * m2 * m2 + pw[h][i1] * cm1 + pw[h][i2] * cm2;
            }
            sumqx[0] = qx_p[0] + qx_p[1];
            sumqx[1] = qx_p[0] + qx_m[1];
            sumqx[2] = qx_m[0] + qx_p[1];
            sumqx[3] = qx_m[0] + qx_m[1];
            sumq2[0] = q2_p[0] + q2_p[1];
            sumq2[1] = q2_p[0] + q2_m[1];
            sumq2[2] = q2_m[0] + q2_p[1];
            sumq2[3] = q2_m[0] + q2_m[1];
            for (int k = 0; k < 4; ++k) {
                if (sumq2[k] > 0 && sumqx[k] * sumqx[k] > best_score * sumq2[k]) {
                    scale = sumqx[k] / sumq2[k];
                    best_score = scale * sumqx[k];
                    besti1 = i1;
                    besti2 = i2;
                    best_k = k;
                }
            }
        }
    }
    if (besti1 < 0 || besti2 < 0 || best_k < 0) return 0;
    int8_t L[IQ1M_BLOCK];
    split_levels(p, bs, besti1, besti2, L);
    if (scale < 0) {
        for (int j = 0; j < bs; ++j) L[j] = (int8_t)(2 - L[j]);
        scale = -scale;
        best_k = 3 - best_k;
    }
    int on_grid = 1, index[2];
    for (int k = 0; k < 2; ++k) {
        const float *xx = (k == 0 ? best_k < 2 : best_k % 2 == 0) ? X_P : X_M;
        index[k] = grid_index_for(L + 8 * k, xb + 8 * k, weight + 8 * k, scale, xx, &on_grid);
    }
    if (!on_grid) {
        float sumqx = 0, sumq2 = 0;
        for (int k = 0; k < 2; ++k) {
            const float *xx = (k == 0 ? best_k < 2 : best_k % 2 == 0) ? X_P : X_M;
            pattern_sums(index[k], xx, 1, weight + 8 * k, xb + 8 * k, &sumqx, &sumq2);
        }
        if (sumqx > 0 && sumq2 > 0) scale = sumqx / sumq2;
    }
    qs[0] = (uint8_t)(index[0] & 255);
    qs[1] = (uint8_t)(index[1] & 255);
    *qh = (uint8_t)((index[0] >> 8) | ((index[1] >> 8) << 4));
    *shift = best_k;
    return scale;
}

void quantize_row_iq1_m_imatrix(const float *x, void *vy, int64_t n, const float *quant_weights) {
    static const uint8_t masks[4] = {0x00, 0x80, 0x08, 0x88}; /* shift signs of the two halves */
    pthread_once(&neighbours_once, build_neighbours);
    block_iq1_m *y = vy;
    float weight[IQ1M_BLOCK], scales[QK_K / IQ1M_BLOCK];
    int shifts[QK_K / IQ1M_BLOCK];
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        const float *xbl = x + QK_K * ibl;
        const float *qwbl = quant_weights ? quant_weights + QK_K * ibl : NULL;
        memset(&y[ibl], 0, sizeof(y[ibl]));
        const float sigma2 = super_block_sigma2(xbl);
        float max_scale = 0;
        for (int ib = 0; ib < QK_K / IQ1M_BLOCK; ++ib) {
            const float *xb = xbl + IQ1M_BLOCK * ib;
            block_weights(xb, qwbl ? qwbl + IQ1M_BLOCK * ib : NULL, sigma2, IQ1M_BLOCK, weight);
            scales[ib] = iq1_m_block(xb, weight, y[ibl].qs + 2 * ib, &y[ibl].qh[ib], &shifts[ib]);
            max_scale = max_scale > scales[ib] ? max_scale : scales[ib];
        }
        if (!max_scale) continue;
        uint16_t sc[4] = {0};
        float d = max_scale / 15;
        const float id = 1 / d;
        /* the 3-bit scales, then the super-block scale refitted over the whole super-block */
        float sumqx = 0, sumq2 = 0;
        for (int ib = 0; ib < QK_K / IQ1M_BLOCK; ++ib) {
            int l = tk_nearest_int(0.5f * (id * scales[ib] - 1));
            l = l < 0 ? 0 : l > 7 ? 7 : l;
            sc[ib / 4] |= (uint16_t)(l << 3 * (ib % 4));
            y[ibl].qh[ib] |= masks[shifts[ib]];
            const float *xb = xbl + IQ1M_BLOCK * ib;
            block_weights(xb, qwbl ? qwbl + IQ1M_BLOCK * ib : NULL, sigma2, IQ1M_BLOCK, weight);
            for (int k = 0; k < 2; ++k) {
                const float *xx = (k == 0 ? shifts[ib] < 2 : shifts[ib] % 2 == 0) ? X_P : X_M;
                const int index = y[ibl].qs[2 * ib + k] + ((y[ibl].qh[ib] << (8 - 4 * k)) & 0x700);
                pattern_sums(index, xx, (float)(2 * l + 1), weight + 8 * k, xb + 8 * k, &sumqx, &sumq2);
            }
        }
        if (sumq2 > 0) d = sumqx / sumq2;
        const uint16_t s = tk_fp32_to_fp16(d * 1.1125f); /* ggml's fudge factor */
        sc[0] |= (uint16_t)((s & 0x000f) << 12);
        sc[1] |= (uint16_t)((s & 0x00f0) << 8);
        sc[2] |= (uint16_t)((s & 0x0f00) << 4);
        sc[3] |= (uint16_t)(s & 0xf000);
        memcpy(y[ibl].scales, sc, sizeof(sc));
    }
}

void quantize_row_iq1_m(const float *x, void *y, int64_t k) { quantize_row_iq1_m_imatrix(x, y, k, NULL); }

/* ------------------------------------------------------------------------------------------------ dequantizers */

static inline const int8_t *grid_row(int index) { return (const int8_t *)(grid_bytes + index); }

void dequantize_row_iq1_s(const void *vx, float *y, int64_t k) {
    const block_iq1_s *x = vx;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const float d = tk_fp16_to_fp32(x[i].d);
        const uint8_t *qs = x[i].qs;
        for (int ib = 0; ib < QK_K / 32; ++ib, qs += 4) {
            const uint16_t qh = x[i].qh[ib];
            const float dl = d * (2 * ((qh >> 12) & 7) + 1);
            const float delta = qh & 0x8000 ? -IQ1_DELTA : IQ1_DELTA;
            for (int l = 0; l < 4; ++l, y += 8) {
                const int8_t *g = grid_row(qs[l] | (((qh >> 3 * l) & 7) << 8));
                for (int j = 0; j < 8; ++j) y[j] = dl * (g[j] + delta);
            }
        }
    }
}

/* the four 16-bit scale words of an IQ1_M super-block and its fp16 scale from their top nibbles */
static inline float iq1_m_scales(const block_iq1_m *x, uint16_t sc[4]) {
    memcpy(sc, x->scales, 4 * sizeof(uint16_t));
    return tk_fp16_to_fp32((uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) |
                                      (sc[3] & 0xf000)));
}

static inline int iq1_m_index(const uint8_t *qs, const uint8_t *qh, int l) {
    return qs[l] | (((uint16_t)qh[l / 2] << (8 - 4 * (l % 2))) & 0x700);
}

void dequantize_row_iq1_m(const void *vx, float *y, int64_t k) {
    const block_iq1_m *x = vx;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        uint16_t sc[4];
        const float d = iq1_m_scales(&x[i], sc);
        const uint8_t *qs = x[i].qs, *qh = x[i].qh;
        for (int ib = 0; ib < QK_K / 32; ++ib, qs += 4, qh += 2) {
            const float dl[2] = {d * (2 * ((sc[ib / 2] >> (6 * (ib % 2) + 0)) & 0x7) + 1),
                                 d * (2 * ((sc[ib / 2] >> (6 * (ib % 2) + 3)) & 0x7) + 1)};
            for (int l = 0; l < 4; ++l, y += 8) {
                const float delta = qh[l / 2] & (l % 2 ? 0x80 : 0x08) ? -IQ1_DELTA : IQ1_DELTA;
                const int8_t *g = grid_row(iq1_m_index(qs, qh, l));
                for (int j = 0; j < 8; ++j) y[j] = dl[l / 2] * (g[j] + delta);
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------------ dot products */

/* Σ q8·grid over the 8 values of grid pattern index */
static inline int grid_dot8(int index, const int8_t *q8) {
    const int8_t *g = grid_row(index);
    int s = 0;
    for (int j = 0; j < 8; ++j) s += q8[j] * g[j];
    return s;
}

void tk_vec_dot_iq1_s_q8_K(int64_t n, float *s, const void *vx, const void *vy) {
    const block_iq1_s *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const int8_t *q8 = y[i].qs;
        const uint8_t *qs = x[i].qs;
        int sumi = 0, sumi1 = 0;
        for (int ib = 0; ib < QK_K / 32; ++ib, qs += 4) {
            const uint16_t qh = x[i].qh[ib];
            const int ls = 2 * ((qh >> 12) & 7) + 1, delta = qh & 0x8000 ? -1 : 1;
            int lsum = 0;
            for (int l = 0; l < 4; ++l, q8 += 8) lsum += grid_dot8(qs[l] | (((qh >> 3 * l) & 7) << 8), q8);
            sumi += ls * lsum;
            sumi1 += ls * delta * (y[i].bsums[2 * ib] + y[i].bsums[2 * ib + 1]);
        }
        sumf += tk_fp16_to_fp32(x[i].d) * y[i].d * (sumi + IQ1_DELTA * sumi1);
    }
    *s = sumf;
}

void tk_vec_dot_iq1_m_q8_K(int64_t n, float *s, const void *vx, const void *vy) {
    const block_iq1_m *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        uint16_t sc[4];
        const float d = iq1_m_scales(&x[i], sc);
        const int8_t *q8 = y[i].qs;
        const uint8_t *qs = x[i].qs, *qh = x[i].qh;
        int sumi1 = 0, sumi2 = 0;
        for (int ib = 0; ib < QK_K / 32; ++ib, qs += 4, qh += 2) {
            int sum1[2] = {0, 0}, sum2[2] = {0, 0};
            for (int l = 0; l < 4; ++l, q8 += 8) {
                const int delta = qh[l / 2] & (l % 2 ? 0x80 : 0x08) ? -1 : 1;
                int lsum2 = 0;
                for (int j = 0; j < 8; ++j) lsum2 += q8[j];
                sum1[l / 2] += grid_dot8(iq1_m_index(qs, qh, l), q8);
                sum2[l / 2] += lsum2 * delta;
            }
            const int ls1 = 2 * ((sc[ib / 2] >> (6 * (ib % 2) + 0)) & 0x7) + 1;
            const int ls2 = 2 * ((sc[ib / 2] >> (6 * (ib % 2) + 3)) & 0x7) + 1;
            sumi1 += sum1[0] * ls1 + sum1[1] * ls2;
            sumi2 += sum2[0] * ls1 + sum2[1] * ls2;
        }
        sumf += d * y[i].d * (sumi1 + IQ1_DELTA * sumi2);
    }
    *s = sumf;
}
