// SPDX-License-Identifier: MIT
#include "base/error.h"
#include "text/jinja/jinja.h"

#include <gtest/gtest.h>

using namespace together;
using json = nlohmann::json;

namespace {

std::string render(const std::string& src, const json& ctx = json::object())
{
    return jinja::Template(src).renderText(ctx);
}

TEST(Jinja, ExpressionsAndFilters)
{
    EXPECT_EQ(render("{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ 7 % 3 }} {{ 7 / 2 }} {{ -3 }}"), "7 3 1 3.5 -3");
    EXPECT_EQ(render("{{ 'a' ~ 1 ~ none }}"), "a1None");
    EXPECT_EQ(render("{{ '  x  ' | trim }}|{{ 'abc' | upper }}|{{ [1,2,3] | length }}|{{ 'x' if true else 'y' }}"), "x|ABC|3|x");
    EXPECT_EQ(render("{{ x | default('d') }} {{ [3,1,2] | sort | join(',') }} {{ [1,2] | first }}{{ [1,2] | last }}"), "d 1,2,3 12");
    EXPECT_EQ(render(R"({{ {"a": [1, "b", true, none], "c": 1.5} | tojson }})"), R"({"a": [1, "b", true, null], "c": 1.5})");
    EXPECT_EQ(render(R"({{ {"a": 1} | tojson(indent=2) }})"), "{\n  \"a\": 1\n}");
    EXPECT_EQ(render("{{ 'héllo'[1:3] }} {{ [1,2,3,4][::-1] }} {{ 'abc'[-1] }}"), "él [4, 3, 2, 1] c");
    EXPECT_EQ(render("{{ 'a,b,,c'.split(',') }} {{ ' x y '.split() }} {{ 'xxhixx'.strip('x') }}"), "['a', 'b', '', 'c'] ['x', 'y'] hi");
    EXPECT_EQ(render("{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }} {{ 'a-b'.replace('-', '+') }}"), "True True a+b");
    EXPECT_EQ(render("{{ 'hello world' | title }} {{ 'Hello' | capitalize }}"), "Hello World Hello");
    EXPECT_EQ(render("{{ 3 is odd }} {{ x is defined }} {{ none is none }} {{ 'a' is string }} {{ 4 is divisibleby 2 }}"),
              "True False True True True");
    EXPECT_EQ(render("{{ 'b' in 'abc' }} {{ 2 not in [1, 3] }} {{ 'k' in {'k': 1} }}"), "True True True");
}

TEST(Jinja, ControlFlowAndScoping)
{
    json ctx = {{"xs", {1, 2, 3}}};
    EXPECT_EQ(render("{% for x in xs %}{{ loop.index }}:{{ x }}{% if not loop.last %},{% endif %}{% endfor %}", ctx), "1:1,2:2,3:3");
    EXPECT_EQ(render("{% for x in xs if x > 1 %}{{ x }}{{ loop.length }}{% endfor %}", ctx), "2232");
    EXPECT_EQ(render("{% for x in [] %}a{% else %}empty{% endfor %}"), "empty");
    EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}"), "a=1;b=2;");
    // set inside a loop does not leak; namespace does
    EXPECT_EQ(render("{% set n = 0 %}{% for x in xs %}{% set n = n + x %}{% endfor %}{{ n }}", ctx), "0");
    EXPECT_EQ(render("{% set ns = namespace(n=0) %}{% for x in xs %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }}", ctx), "6");
    EXPECT_EQ(render("{% for x in xs %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 3 %}{% break %}{% endif %}{{ x }}{% endfor %}", ctx),
              "1");
    EXPECT_EQ(render("{% if 0 %}a{% elif 1 %}b{% else %}c{% endif %}"), "b");
    EXPECT_EQ(render("{% macro greet(name, p='Hi') %}{{ p }} {{ name }}{% endmacro %}{{ greet('Bo') }}/{{ greet('Al', p='Yo') }}"),
              "Hi Bo/Yo Al");
    EXPECT_EQ(render("{% set s %}inner {{ 1 }}{% endset %}[{{ s }}]"), "[inner 1]");
    // A macro defined in a loop body and handed out through a namespace outlives that body's scope.
    EXPECT_EQ(render("{% set ns = namespace(f=none) %}{% for x in [7] %}{% macro m() %}x={{ x }}{% endmacro %}{% set ns.f = m %}"
                     "{% endfor %}{{ ns.f() }}"),
              "x=7");
    EXPECT_EQ(render("{{ xs | selectattr('a') | list | length }} {{ [{'r': 'u'}, {'r': 's'}] | selectattr('r', 'equalto', 's') | list | length }}", ctx),
              "0 1");
    EXPECT_EQ(render("{{ [{'n': 'a'}, {'n': 'b'}] | map(attribute='n') | join('+') }}"), "a+b");
}

TEST(Jinja, WhitespaceControlLikeTransformers)
{
    // trim_blocks: newline after a block tag is dropped; lstrip_blocks: indentation before a block tag is dropped
    EXPECT_EQ(render("{% if true %}\n    yes\n{% endif %}\n"), "    yes\n");
    EXPECT_EQ(render("  {% if true %}x{% endif %}"), "x");
    EXPECT_EQ(render("a  {%- if true -%}  b  {%- endif -%}  c"), "abc");
    EXPECT_EQ(render("a {{- ' b ' -}} c"), "a b c");
    EXPECT_EQ(render("{# comment #}\nx"), "x");
    EXPECT_EQ(render("{{ 'x' }}\ny"), "x\ny"); // trim_blocks does not apply to expressions
}

TEST(Jinja, ErrorsAreClear)
{
    auto errorOf = [](const std::string& src, const json& ctx = json::object()) -> std::string {
        try {
            jinja::Template(src).renderText(ctx);
        } catch (const Error& e) {
            return e.what();
        }
        return "";
    };
    EXPECT_NE(errorOf("{{ raise_exception('Only user and assistant roles') }}").find("Only user and assistant roles"), std::string::npos);
    EXPECT_NE(errorOf("{% if x %}").find("endif"), std::string::npos);
    EXPECT_NE(errorOf("{{ 'a' | nosuchfilter }}").find("unknown filter 'nosuchfilter'"), std::string::npos);
    EXPECT_NE(errorOf("line1\n{{ 1 + }}").find("line 2"), std::string::npos);
    EXPECT_NE(errorOf("{% frobnicate %}").find("unknown statement"), std::string::npos);
    EXPECT_NE(errorOf("{{ 'a' - 1 }}").find("needs numbers"), std::string::npos);
}

TEST(Jinja, UntrustedMarksFollowStringOperations)
{
    json ctx = {{"messages", {{{"role", "user"}, {"content", "  <|x|>  "}}}}};
    auto r = jinja::Template("<|s|>{{ messages[0]['content'] | trim }}<|e|>{{ messages[0].role }}").render(ctx, {"content"});
    ASSERT_EQ(r.text, "<|s|><|x|><|e|>user");
    ASSERT_EQ(r.untrusted.size(), r.text.size());
    for (size_t i = 0; i < r.text.size(); ++i)
        EXPECT_EQ(r.untrusted[i], i >= 5 && i < 10) << i;
}

} // namespace
